//! `POST /v1/score`, the native call; the rerank routes score through [`score_on`] too.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use axum::Json;

use super::{check_count, check_job_tokens, check_tokens};
use crate::api::{ScoreRequest, ScoreResponse};
use crate::engine::{ClientId, Passes, PreparedRequest};
use crate::server::body::JsonBody;
use crate::server::client::Client;
use crate::server::error::ApiError;
use crate::server::middleware::{with_tokens, TokenCount};
use crate::server::registry::{Limits, ModelEntry};
use crate::server::{jobs, App};

/// `POST /v1/score`.
pub async fn score(
    State(app): State<Arc<App>>,
    Client(client): Client,
    JsonBody(request): JsonBody<ScoreRequest>,
) -> Result<Response, ApiError> {
    let snapshot = app.registry.snapshot();
    check_count(request.candidates.len(), &snapshot.limits, "candidates")?;
    let entry = snapshot.resolve(request.model.as_deref())?;
    let reference = request
        .reference_model
        .as_deref()
        .or(entry.spec.reference_model.as_deref())
        .map(|id| snapshot.resolve(Some(id)))
        .transpose()?;
    let response = score_on(
        &entry,
        &client,
        request,
        snapshot.limits,
        reference.as_ref(),
    )
    .await?;
    let tokens = TokenCount {
        tokens: response.usage.total_tokens,
        cached: response.usage.cached_tokens,
    };
    Ok(with_tokens(Json(response), tokens))
}

/// Scores `request` on `entry` the way the offline scorer does ([`PreparedRequest`]), in a pass
/// it may share with other queued requests; with `reference`, the same tokens on that model too.
/// Its jobs queue under `client`.
pub async fn score_on(
    entry: &Arc<ModelEntry>,
    client: &ClientId,
    request: ScoreRequest,
    limits: Limits,
    reference: Option<&Arc<ModelEntry>>,
) -> Result<ScoreResponse, ApiError> {
    let loaded = jobs::loaded(entry)?;
    let principle = entry.spec.principle.clone();
    let model = Arc::clone(&loaded.model);
    let reference_model = reference
        .map(|r| jobs::loaded(r).map(|l| Arc::clone(&l.model)))
        .transpose()?;
    let (prepared, reference_pass, request) = jobs::blocking(move || {
        let prepared = PreparedRequest::new(&model, &request, principle.as_deref())?;
        let reference_pass = reference_model
            .map(|r| prepared.reference_pass(&model, &r, &request, principle.as_deref()))
            .transpose()?;
        Ok((prepared, reference_pass, request))
    })
    .await?;
    let reference_tokens = reference_pass.as_ref().map_or(0, PreparedRequest::tokens);
    check_tokens(prepared.all_tokens() + reference_tokens, &limits)?;
    check_job_tokens(prepared.largest_job().max(reference_tokens), &limits)?;
    // Every pass is queued before any is awaited: the reference model's worker runs its pass
    // while this one's runs the others, one after another.
    let reference = match (reference, reference_pass) {
        (Some(entry), Some(pass)) => Some((
            entry.id().to_owned(),
            jobs::worker(entry)?.score(client, pass),
        )),
        _ => None,
    };
    let worker = jobs::worker(entry)?;
    let neutral = prepared
        .neutral_pass()
        .map(|pass| worker.score(client, pass));
    let reviewer = prepared
        .reviewer_layouts()
        .map(|l| worker.score_each(client, l));
    let done = jobs::done(worker.score(client, prepared)).await?;
    let (main, waited) = (done.result?, done.waited);
    let mut passes = Passes::main(main);
    if let Some(neutral) = neutral {
        passes.neutral = Some(jobs::done(neutral).await?.result?);
    }
    if let Some(reviewer) = reviewer {
        passes.reviewer = Some(jobs::done(reviewer).await?.result?);
    }
    if let Some((id, pending)) = reference {
        passes.reference = Some(jobs::done(pending).await?.result?);
        passes.reference_model = Some(id);
    }
    let id = entry.id().to_owned();
    let mut response =
        jobs::blocking(move || Ok(done.input.respond(&loaded.model, &id, &request, &passes)?))
            .await?;
    response.timings.queue_ms = waited.as_secs_f64() * 1e3;
    Ok(response)
}
