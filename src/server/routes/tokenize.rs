//! `POST /tokenize`, `POST /detokenize`, `GET /tokenizer_info`, with llama-server's and vLLM's
//! field names both accepted (the dialects are in [`crate::api::tokenize`]).

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use axum::Json;

use crate::api::{
    DetokenizeRequest, DetokenizeResponse, ModelQuery, Piece, TokenList, TokenPiece,
    TokenizeRequest, TokenizeResponse, TokenizerInfoResponse,
};
use crate::engine::worker::LoadedModel;
use crate::engine::{EngineError, LlamaToken};
use crate::server::body::{JsonBody, QueryParams};
use crate::server::error::ApiError;
use crate::server::middleware::{with_tokens, TokenCount};
use crate::server::{jobs, App};

/// `/tokenize` → [`TokenizeResponse`], tokenized off the async executor.
pub async fn tokenize(
    State(app): State<Arc<App>>,
    JsonBody(request): JsonBody<TokenizeRequest>,
) -> Result<Response, ApiError> {
    let snapshot = app.registry.snapshot();
    let loaded = jobs::loaded(&*snapshot.resolve(request.model.as_deref())?)?;
    let response = tokio::task::spawn_blocking(move || tokenize_on(&loaded, &request))
        .await
        .map_err(|e| ApiError::internal(format!("tokenizing failed: {e}")))??;
    let tokens = TokenCount {
        tokens: response.count,
        cached: 0,
    };
    Ok(with_tokens(Json(response), tokens))
}

fn tokenize_on(
    loaded: &LoadedModel,
    request: &TokenizeRequest,
) -> Result<TokenizeResponse, ApiError> {
    let model = &loaded.model;
    let (text, add_special) = request.text_and_add_special().ok_or_else(|| {
        ApiError::bad_request(
            "invalid_request",
            "send the text as exactly one of `content` (llama-server) or `prompt` (vLLM)",
        )
    })?;
    let tokens = model.tokenize(
        text,
        add_special && model.adds_bos(),
        request.parses_special(),
    )?;
    let list = if request.with_pieces {
        let piece = |t: LlamaToken| -> Result<TokenPiece, EngineError> {
            Ok(TokenPiece {
                id: t.0,
                piece: Piece::from_bytes(model.token_bytes(t)?),
            })
        };
        TokenList::Pieces(tokens.iter().map(|&t| piece(t)).collect::<Result<_, _>>()?)
    } else {
        TokenList::Ids(tokens.iter().map(|t| t.0).collect())
    };
    let token_strs = match request.return_token_strs {
        true => Some(model.token_texts(&tokens)?),
        false => None,
    };
    Ok(TokenizeResponse::new(list, loaded.n_ctx, token_strs))
}

/// `/detokenize` → [`DetokenizeResponse`] (the same text twice). Bytes that are not valid UTF-8
/// (a character cut between tokens) become U+FFFD. Ids outside the vocabulary: 400.
pub async fn detokenize(
    State(app): State<Arc<App>>,
    JsonBody(request): JsonBody<DetokenizeRequest>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    let snapshot = app.registry.snapshot();
    let loaded = jobs::loaded(&*snapshot.resolve(request.model.as_deref())?)?;
    let tokens = to_tokens(&loaded, &request.tokens)?;
    let text = loaded.model.detokenize(&tokens)?;
    Ok(Json(DetokenizeResponse::new(text)))
}

/// Checks token ids from a client: each must be in the model's vocabulary (400 otherwise), since
/// llama.cpp must never see another.
pub fn to_tokens(loaded: &LoadedModel, ids: &[i64]) -> Result<Vec<LlamaToken>, ApiError> {
    let n_vocab = loaded.model.meta().n_vocab;
    ids.iter()
        .map(|&id| {
            i32::try_from(id)
                .ok()
                .filter(|&id| loaded.model.is_valid_token(id))
                .map(LlamaToken)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_token",
                        format!("token id {id} is not in the model's vocabulary (0..{n_vocab})"),
                    )
                })
        })
        .collect()
}

/// `GET /tokenizer_info[?model=ID]` → [`TokenizerInfoResponse`].
pub async fn tokenizer_info(
    State(app): State<Arc<App>>,
    QueryParams(query): QueryParams<ModelQuery>,
) -> Result<Json<TokenizerInfoResponse>, ApiError> {
    let snapshot = app.registry.snapshot();
    let entry = snapshot.resolve(query.model.as_deref())?;
    let loaded = jobs::loaded(&entry)?;
    let info = &loaded.tokenizer;
    Ok(Json(TokenizerInfoResponse {
        model: entry.id().to_owned(),
        bos_token: info.bos_token.clone(),
        eos_token: info.eos_token.clone(),
        pad_token: info.eos_token.clone(),
        chat_template: info.chat_template.clone(),
        add_bos_token: loaded.model.adds_bos(),
        model_max_length: loaded.n_ctx,
    }))
}
