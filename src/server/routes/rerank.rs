//! The rerank routes, every dialect over one scoring of the documents as answers to the query
//! (chat format, `endo`): `POST /v1/rerank` and `/v2/rerank` (Cohere, Jina, vLLM, Voyage),
//! `POST /rerank` (those, or text-embeddings-inference when the body has `texts`), and
//! `GET /info` (text-embeddings-inference).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::score::score_on;
use crate::api::{
    AnyRerankRequest, Document, Format, Ranking, RerankRequest, ScoreRequest, TeiInfo, TeiModelType,
};
use crate::engine::ClientId;
use crate::reward::Aggregate;
use crate::server::body::JsonBody;
use crate::server::client::Client;
use crate::server::dispatch::Target;
use crate::server::error::ApiError;
use crate::server::middleware::{with_tokens, TokenCount};
use crate::server::App;

/// `POST /v1/rerank`.
pub async fn v1(
    State(app): State<Arc<App>>,
    Client(client): Client,
    JsonBody(request): JsonBody<RerankRequest>,
) -> Result<Response, ApiError> {
    cohere(&app, &client, request, "1").await
}

/// `POST /v2/rerank`.
pub async fn v2(
    State(app): State<Arc<App>>,
    Client(client): Client,
    JsonBody(request): JsonBody<RerankRequest>,
) -> Result<Response, ApiError> {
    cohere(&app, &client, request, "2").await
}

/// `POST /rerank`: text-embeddings-inference's bare list for a body with `texts` (cut to `top_n`
/// when one is given, as LiteLLM's `huggingface` provider asks), else as `/v1/rerank`.
pub async fn any(
    State(app): State<Arc<App>>,
    Client(client): Client,
    JsonBody(request): JsonBody<AnyRerankRequest>,
) -> Result<Response, ApiError> {
    let request = match request {
        AnyRerankRequest::Documents(request) => return cohere(&app, &client, request, "1").await,
        AnyRerankRequest::Tei(request) => request,
    };
    let texts = request.texts;
    let (ranking, _, tokens) = rank(
        &app,
        &client,
        None,
        request.query,
        texts.clone(),
        request.top_n,
        None,
    )
    .await?;
    let texts = request.return_text.unwrap_or(false).then_some(&texts[..]);
    let list = ranking.tei(request.raw_scores.unwrap_or(false), texts);
    // A bare list has no room for `format`: the header says it (chat, or raw without a template).
    let format = match ranking.format {
        Format::Chat => "chat",
        Format::Raw => "raw",
    };
    let mut response = with_tokens(Json(list), tokens);
    response
        .headers_mut()
        .insert(FORMAT_HEADER, HeaderValue::from_static(format));
    Ok(response)
}

/// The header of `POST /rerank`'s bare-list answer that says how the texts were read.
pub const FORMAT_HEADER: &str = "x-endorm-format";

/// `GET /info`: text-embeddings-inference's description of the default model.
pub async fn info(State(app): State<Arc<App>>) -> Result<Json<TeiInfo>, ApiError> {
    let target = Target::of(&app, None, 0, "documents")?;
    Ok(Json(TeiInfo {
        model_id: target.id().to_owned(),
        model_dtype: "gguf".into(),
        model_type: TeiModelType::reward(),
        max_concurrent_requests: app.started.server.queue_depth,
        max_input_length: target.loaded.n_ctx,
        max_batch_tokens: target.limits.max_tokens,
        max_client_batch_size: target.limits.max_candidates,
        tokenization_workers: 1,
        version: env!("CARGO_PKG_VERSION").into(),
    }))
}

async fn cohere(
    app: &Arc<App>,
    client: &ClientId,
    request: RerankRequest,
    version: &str,
) -> Result<Response, ApiError> {
    let documents: Vec<String> = request
        .documents
        .into_iter()
        .map(Document::into_text)
        .collect();
    let (ranking, model, tokens) = rank(
        app,
        client,
        request.model,
        request.query,
        documents.clone(),
        request.top_n,
        request.max_tokens_per_doc,
    )
    .await?;
    let documents = request
        .return_documents
        .unwrap_or(false)
        .then_some(&documents[..]);
    let response = ranking.respond(response_id(), model, version, documents);
    Ok(with_tokens(Json(response), tokens).into_response())
}

/// Scores `documents` as answers to `query`. A model name the daemon does not serve is answered
/// by the default model (rerank clients always send one); the name is echoed back.
async fn rank(
    app: &Arc<App>,
    client: &ClientId,
    model: Option<String>,
    query: String,
    documents: Vec<String>,
    top_n: Option<usize>,
    max_tokens_per_doc: Option<usize>,
) -> Result<(Ranking, String, TokenCount), ApiError> {
    if documents.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_request",
            "`documents` is empty: send at least one",
        ));
    }
    let served = model
        .as_deref()
        .filter(|id| app.registry.snapshot().models.contains_key(*id));
    let target = Target::of(app, served, documents.len(), "documents")?;
    let score = ScoreRequest {
        model: Some(target.id().to_owned()),
        prompt: Some(query),
        candidates: documents,
        aggregate: Aggregate::Endo,
        max_candidate_tokens: max_tokens_per_doc,
        ..ScoreRequest::default()
    };
    let response = score_on(&target, client, score, None).await?;
    let tokens = TokenCount {
        tokens: response.usage.total_tokens,
        cached: response.usage.cached_tokens,
    };
    let model = model.unwrap_or_else(|| target.id().to_owned());
    Ok((Ranking::from_score(&response, top_n), model, tokens))
}

/// A response id, unique within the daemon's life.
fn response_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("endorm-rerank-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}
