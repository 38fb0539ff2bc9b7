//! `POST /v1/score`, the native call; the rerank routes score through [`score_on`] too.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use axum::Json;

use crate::api::{ScoreRequest, ScoreResponse};
use crate::engine::{ClientId, PassKind, Passes, PreparedRequest};
use crate::server::body::JsonBody;
use crate::server::client::Client;
use crate::server::dispatch::{blocking, Target};
use crate::server::error::ApiError;
use crate::server::middleware::{with_tokens, TokenCount};
use crate::server::App;

/// `POST /v1/score`.
pub async fn score(
    State(app): State<Arc<App>>,
    Client(client): Client,
    JsonBody(request): JsonBody<ScoreRequest>,
) -> Result<Response, ApiError> {
    let count = request.candidates.len();
    let target = Target::of(&app, request.model.as_deref(), count, "candidates");
    // An unknown reference model is named (404) before a main model that is not ready is.
    let configured = match &target {
        Ok(target) => target.entry.spec.reference_model.clone(),
        Err(_) => None,
    };
    let reference_id = request.reference_model.clone().or(configured);
    if let Some(id) = &reference_id {
        app.registry.snapshot().resolve(Some(id))?;
    }
    let target = target?;
    let reference = reference_id.map(|id| target.other(&app, &id)).transpose()?;
    let response = score_on(&target, &client, request, reference.as_ref()).await?;
    let tokens = TokenCount {
        tokens: response.usage.total_tokens,
        cached: response.usage.cached_tokens,
    };
    Ok(with_tokens(Json(response), tokens))
}

/// Scores `request` on `target` the way the offline scorer does ([`PreparedRequest`]); with
/// `reference`, its reference pass on that model. Every pass is one job queued under `client`,
/// all queued before any is awaited (the reference model's worker runs its pass while this one's
/// runs the others); a pass of one layout may share a decode with other queued requests.
pub async fn score_on(
    target: &Target,
    client: &ClientId,
    request: ScoreRequest,
    reference: Option<&Target>,
) -> Result<ScoreResponse, ApiError> {
    target.check_text(request.text_bytes(), request.message_count())?;
    let principle = target.entry.spec.principle.clone();
    let (model, reference_model) = (target.model(), reference.map(Target::model));
    let (prepared, request) = blocking(move || {
        let reference = reference_model.as_deref();
        let prepared = PreparedRequest::new(&model, reference, &request, principle.as_deref())?;
        Ok((prepared, request))
    })
    .await?;
    target.check_tokens(prepared.all_tokens())?;
    target.check_job_tokens(prepared.largest_job())?;
    let pending = prepared
        .passes()
        .into_iter()
        .map(|pass| {
            let on = match reference {
                Some(reference) if pass.kind.on_reference() => reference,
                _ => target,
            };
            Ok((pass.kind, on.worker()?.score(client, pass)))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let mut passes = Passes::default();
    let mut waited = Duration::ZERO;
    for (kind, submitted) in pending {
        let done = target.done(submitted).await?;
        if kind == PassKind::Main {
            waited = done.waited;
        }
        passes.add(kind, done.result?);
    }
    let (model, id) = (target.model(), target.id().to_owned());
    let reference_id = reference.map(|r| r.id().to_owned());
    let mut response = blocking(move || {
        let reference = reference_id.as_deref();
        Ok(prepared.respond(&model, &id, &request, &passes, reference)?)
    })
    .await?;
    response.timings.queue_ms = waited.as_secs_f64() * 1e3;
    Ok(response)
}
