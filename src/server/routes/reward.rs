//! `POST /get_reward`: the remote reward model shape of OpenRLHF (`--remote_rm_url`).

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use axum::Json;

use super::{check_count, check_job_tokens, check_tokens};
use crate::api::{RewardRequest, RewardResponse};
use crate::engine::prepare;
use crate::reward::{Aggregates, Alpha};
use crate::server::body::JsonBody;
use crate::server::client::Client;
use crate::server::error::ApiError;
use crate::server::middleware::{with_tokens, TokenCount};
use crate::server::{jobs, App};

/// `{"rewards": [endo, ...], "scores": [...]}` in query order; the layout is
/// [`prepare::rewards`]'s. One bad query fails the request, naming it.
pub async fn get_reward(
    State(app): State<Arc<App>>,
    Client(client): Client,
    JsonBody(request): JsonBody<RewardRequest>,
) -> Result<Response, ApiError> {
    let snapshot = app.registry.snapshot();
    check_count(request.query.len(), &snapshot.limits, "queries")?;
    if request.query.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_request",
            "`query` is empty: send at least one text",
        ));
    }
    let entry = snapshot.resolve(request.model.as_deref())?;
    let model = Arc::clone(&jobs::loaded(&entry)?.model);
    let count = request.query.len();
    let groups = jobs::blocking(move || {
        Ok(prepare::rewards(
            &model,
            &request.query,
            request.prompts.as_deref(),
        )?)
    })
    .await?;
    let tokens: usize = groups.iter().map(|(prepared, _)| prepared.tokens()).sum();
    check_tokens(tokens, &snapshot.limits)?;
    let largest = groups.iter().map(|(prepared, _)| prepared.tokens()).max();
    check_job_tokens(largest.unwrap_or(0), &snapshot.limits)?;
    let (layouts, owners): (Vec<_>, Vec<_>) = groups
        .into_iter()
        .map(|(prepared, indices)| ((format!("query[{}]", indices[0]), prepared), indices))
        .unzip();
    // A batch whose every response is empty has nothing to decode.
    let scored = match layouts.is_empty() {
        true => Vec::new(),
        // One job per group, so other clients' requests run between them (fairness).
        false => {
            let worker = jobs::worker(&entry)?;
            let groups = layouts.into_iter().map(|layout| vec![layout]).collect();
            jobs::each(groups, |group| worker.score_each(&client, group))
                .await?
                .into_iter()
                .flatten()
                .collect()
        }
    };
    let mut rewards = vec![0.0; count];
    for (scored, indices) in scored.iter().zip(&owners) {
        for (values, &index) in scored.candidates.iter().zip(indices) {
            rewards[index] = Aggregates::of(values, Alpha::ONE).endo;
        }
    }
    Ok(with_tokens(
        Json(RewardResponse::new(rewards)),
        TokenCount { tokens, cached: 0 },
    ))
}
