//! `POST /v1/score`, the native call; the rerank routes score through [`score_on`] too.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use axum::Json;

use super::{check_count, check_tokens};
use crate::api::{ScoreRequest, ScoreResponse};
use crate::engine::{Passes, PreparedRequest};
use crate::server::body::JsonBody;
use crate::server::error::ApiError;
use crate::server::middleware::{with_tokens, TokenCount};
use crate::server::registry::{Limits, ModelEntry};
use crate::server::{jobs, App};

/// `POST /v1/score`.
pub async fn score(
    State(app): State<Arc<App>>,
    JsonBody(request): JsonBody<ScoreRequest>,
) -> Result<Response, ApiError> {
    let snapshot = app.registry.snapshot();
    check_count(request.candidates.len(), &snapshot.limits, "candidates")?;
    let entry = snapshot.resolve(request.model.as_deref())?;
    let response = score_on(&entry, request, snapshot.limits).await?;
    let tokens = TokenCount {
        tokens: response.usage.total_tokens,
        cached: response.usage.cached_tokens,
    };
    Ok(with_tokens(Json(response), tokens))
}

/// Scores `request` on `entry` the way the offline scorer does ([`PreparedRequest`]), in a pass
/// it may share with other queued requests.
pub async fn score_on(
    entry: &Arc<ModelEntry>,
    request: ScoreRequest,
    limits: Limits,
) -> Result<ScoreResponse, ApiError> {
    let loaded = jobs::loaded(entry)?;
    let principle = entry.spec.principle.clone();
    let model = Arc::clone(&loaded.model);
    let (prepared, request) = jobs::blocking(move || {
        let prepared = PreparedRequest::new(&model, &request, principle.as_deref())?;
        Ok((prepared, request))
    })
    .await?;
    check_tokens(prepared.all_tokens(), &limits)?;
    // Every pass is queued before any is awaited: they run one after another on the worker.
    let worker = jobs::worker(entry)?;
    let neutral = prepared.neutral_pass().map(|pass| worker.score(pass));
    let reviewer = prepared.reviewer_layouts().map(|l| worker.score_each(l));
    let done = jobs::done(worker.score(prepared)).await?;
    let (main, waited) = (done.result?, done.waited);
    let mut passes = Passes::main(main);
    if let Some(neutral) = neutral {
        passes.neutral = Some(jobs::done(neutral).await?.result?);
    }
    if let Some(reviewer) = reviewer {
        passes.reviewer = Some(jobs::done(reviewer).await?.result?);
    }
    let id = entry.id().to_owned();
    let mut response =
        jobs::blocking(move || Ok(done.input.respond(&loaded.model, &id, &request, &passes)?))
            .await?;
    response.timings.queue_ms = waited.as_secs_f64() * 1e3;
    Ok(response)
}
