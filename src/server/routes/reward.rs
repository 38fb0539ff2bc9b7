//! `POST /get_reward`: the remote reward model shape of OpenRLHF (`--remote_rm_url`).

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use axum::Json;

use super::{check_count, check_tokens};
use crate::api::{RewardRequest, RewardResponse};
use crate::engine::{prepare, EngineError};
use crate::reward::{Aggregates, Alpha};
use crate::server::body::JsonBody;
use crate::server::error::ApiError;
use crate::server::middleware::{with_tokens, TokenCount};
use crate::server::{jobs, App};

/// `{"rewards": [endo, ...]}` in query order, raw format. With `prompts`, each response is its
/// query minus its prompt, and queries of the same prompt are scored together, as the candidates of
/// one raw-format request; without, each query is scored from its first token.
pub async fn get_reward(
    State(app): State<Arc<App>>,
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
    // Each layout with the queries it scores, in candidate order.
    let groups = jobs::blocking(move || {
        let groups = match &request.prompts {
            Some(prompts) => prepare::split_at_prompts(&model, &request.query, prompts)?,
            None => request
                .query
                .iter()
                .enumerate()
                .map(|(index, query)| {
                    let prepared = prepare::from_first_token(&model, query)
                        .map_err(|e| e.at(format!("query[{index}]")))?;
                    Ok((prepared, vec![index]))
                })
                .collect::<Result<_, EngineError>>()?,
        };
        Ok(groups)
    })
    .await?;
    let tokens: usize = groups.iter().map(|(prepared, _)| prepared.tokens()).sum();
    check_tokens(tokens, &snapshot.limits)?;
    let (layouts, owners): (Vec<_>, Vec<_>) = groups
        .into_iter()
        .map(|(prepared, indices)| ((format!("query[{}]", indices[0]), prepared), indices))
        .unzip();
    let done = jobs::done(jobs::worker(&entry)?.score_each(layouts)).await?;
    let mut rewards = vec![0.0; count];
    for (scored, indices) in done.result?.iter().zip(&owners) {
        for (values, &index) in scored.candidates.iter().zip(indices) {
            rewards[index] = Aggregates::of(values, Alpha::ONE).endo;
        }
    }
    Ok(with_tokens(
        Json(RewardResponse { rewards }),
        TokenCount { tokens, cached: 0 },
    ))
}
