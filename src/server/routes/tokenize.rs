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
use crate::engine::{LoadedModel, Token};
use crate::server::body::{JsonBody, QueryParams};
use crate::server::dispatch::{blocking, Target};
use crate::server::error::ApiError;
use crate::server::middleware::{with_tokens, TokenCount};
use crate::server::App;

/// `/tokenize` → [`TokenizeResponse`], tokenized off the async executor.
pub async fn tokenize(
    State(app): State<Arc<App>>,
    JsonBody(request): JsonBody<TokenizeRequest>,
) -> Result<Response, ApiError> {
    let target = Target::of(&app, request.model.as_deref(), 0, "texts")?;
    let bytes = request
        .text_and_add_special()
        .map_or(0, |(text, _)| text.len());
    target.check_text(bytes, 0)?;
    let loaded = Arc::clone(&target.loaded);
    let response = blocking(move || tokenize_on(&loaded, &request)).await?;
    // The same limit as every route that tokenizes: `/tokenize` is no way around it.
    target.check_tokens(response.count)?;
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
        let piece = |&t: &Token| TokenPiece {
            id: t.id(),
            piece: Piece::from_bytes(model.token_bytes(t)),
        };
        TokenList::Pieces(tokens.iter().map(piece).collect())
    } else {
        TokenList::Ids(tokens.iter().map(|t| t.id()).collect())
    };
    let token_strs = request
        .return_token_strs
        .then(|| model.token_texts(&tokens));
    Ok(TokenizeResponse::new(list, loaded.n_ctx, token_strs))
}

/// `/detokenize` → [`DetokenizeResponse`] (the same text twice). Bytes that are not valid UTF-8
/// (a character cut between tokens) become U+FFFD. Ids outside the vocabulary: 400.
pub async fn detokenize(
    State(app): State<Arc<App>>,
    JsonBody(request): JsonBody<DetokenizeRequest>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    let loaded = Target::of(&app, request.model.as_deref(), 0, "texts")?.loaded;
    let text = blocking(move || {
        let tokens = loaded.model.tokens(&request.tokens)?;
        Ok(loaded.model.detokenize(&tokens))
    })
    .await?;
    Ok(Json(DetokenizeResponse::new(text)))
}

/// `GET /tokenizer_info[?model=ID]` → [`TokenizerInfoResponse`].
pub async fn tokenizer_info(
    State(app): State<Arc<App>>,
    QueryParams(query): QueryParams<ModelQuery>,
) -> Result<Json<TokenizerInfoResponse>, ApiError> {
    let target = Target::of(&app, query.model.as_deref(), 0, "texts")?;
    let loaded = &target.loaded;
    let info = &loaded.tokenizer;
    Ok(Json(TokenizerInfoResponse {
        model: target.id().to_owned(),
        bos_token: info.bos_token.clone(),
        eos_token: info.eos_token.clone(),
        pad_token: info.eos_token.clone(),
        chat_template: info.chat_template.clone(),
        add_bos_token: loaded.model.adds_bos(),
        model_max_length: loaded.n_ctx,
    }))
}
