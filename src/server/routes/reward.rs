//! `POST /get_reward`: the remote reward model shape of OpenRLHF (`--remote_rm_url`).

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use axum::Json;

use crate::api::{RewardRequest, RewardResponse};
use crate::engine::PreparedRewards;
use crate::server::body::JsonBody;
use crate::server::client::Client;
use crate::server::dispatch::{blocking, Target};
use crate::server::error::ApiError;
use crate::server::middleware::{with_tokens, TokenCount};
use crate::server::App;

/// `{"rewards": [endo, ...], "scores": [...]}` in query order; the layout is
/// [`PreparedRewards`]'s. One bad query fails the request, naming it.
pub async fn get_reward(
    State(app): State<Arc<App>>,
    Client(client): Client,
    JsonBody(request): JsonBody<RewardRequest>,
) -> Result<Response, ApiError> {
    let count = request.query.len();
    if count == 0 {
        return Err(ApiError::bad_request(
            "invalid_request",
            "`query` is empty: send at least one text",
        ));
    }
    let target = Target::of(&app, request.model.as_deref(), count, "queries")?;
    let bytes = request.query.iter().chain(request.prompts.iter().flatten());
    target.check_text(bytes.map(String::len).sum(), 0)?;
    let model = target.model();
    let prepared = blocking(move || {
        let prompts = request.prompts.as_deref();
        Ok(PreparedRewards::new(&model, &request.query, prompts)?)
    })
    .await?;
    let tokens = prepared.tokens();
    target.check_tokens(tokens)?;
    target.check_job_tokens(prepared.largest_job())?;
    // One job per group, so other clients' requests run between them (fairness).
    let passes = prepared.passes.clone();
    let scored = target
        .each(passes, |worker, pass| worker.score(&client, pass))
        .await?;
    let rewards = prepared.rewards(&scored)?;
    Ok(with_tokens(
        Json(RewardResponse::new(rewards)),
        TokenCount { tokens, cached: 0 },
    ))
}
