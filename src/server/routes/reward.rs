//! `POST /get_reward`: the remote reward model shape of OpenRLHF (`--remote_rm_url`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{check_count, check_tokens};
use crate::api::{Format, ScoreRequest};
use crate::engine::{prepare, score_request, Candidate, Prepared, Scorer};
use crate::reward::{Aggregate, Aggregates, Alpha};
use crate::server::body::read_json;
use crate::server::error::ApiError;
use crate::server::middleware::{with_tokens, TokenCount};
use crate::server::registry::Limits;
use crate::server::{jobs, App};

/// Body of `/get_reward`. Other fields OpenRLHF sends (`labels`) are ignored.
#[derive(Debug, Deserialize)]
pub struct RewardRequest {
    /// Model id.
    #[serde(default)]
    pub model: Option<String>,
    /// Prompt + response texts.
    pub query: Vec<String>,
    /// The prompt of each query; its response is the rest of the query.
    #[serde(default)]
    pub prompts: Option<Vec<String>>,
}

/// `{"rewards": [endo, ...]}` in query order, raw format.
pub async fn get_reward(State(app): State<Arc<App>>, body: Body) -> Result<Response, ApiError> {
    let snapshot = app.registry.snapshot();
    let request: RewardRequest = read_json(body, snapshot.limits.max_body_bytes).await?;
    check_count(request.query.len(), &snapshot.limits, "queries")?;
    if request.query.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_request",
            "`query` is empty: send at least one text",
        ));
    }
    if let Some(prompts) = &request.prompts {
        if prompts.len() != request.query.len() {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!(
                    "`prompts` has {} entries and `query` {}: give one prompt per query",
                    prompts.len(),
                    request.query.len()
                ),
            ));
        }
    }
    let entry = snapshot.resolve(request.model.as_deref())?;
    let limits = snapshot.limits;
    let ((rewards, tokens), _) =
        jobs::run(&entry, &app.metrics, move |scorer| match request.prompts {
            Some(prompts) => with_prompts(scorer, &request.query, &prompts, limits),
            None => whole_queries(scorer, &request.query, limits),
        })
        .await?;
    Ok(with_tokens(
        Json(json!({"rewards": rewards})),
        TokenCount { tokens, cached: 0 },
    ))
}

/// Each response is its query minus its prompt; queries of the same prompt are scored together,
/// as candidates of one `/v1/score` request in raw format.
fn with_prompts(
    scorer: &mut Scorer<'_>,
    queries: &[String],
    prompts: &[String],
    limits: Limits,
) -> Result<(Vec<f64>, usize), ApiError> {
    let mut by_prompt: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, (query, prompt)) in queries.iter().zip(prompts).enumerate() {
        if !query.starts_with(prompt.as_str()) {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!("query[{index}] does not start with prompts[{index}]"),
            ));
        }
        by_prompt.entry(prompt).or_default().push(index);
    }
    let mut rewards = vec![0.0; queries.len()];
    let mut tokens = 0;
    for (prompt, indices) in by_prompt {
        let place = format!("query[{}]", indices[0]);
        let request = ScoreRequest {
            format: Some(Format::Raw),
            prompt: Some(prompt.to_owned()),
            candidates: indices
                .iter()
                .map(|&i| queries[i][prompt.len()..].to_owned())
                .collect(),
            aggregate: Aggregate::Endo,
            ..ScoreRequest::default()
        };
        let prepared =
            prepare(scorer.model(), &request, None).map_err(|e| ApiError::from(e).at(&place))?;
        tokens += count(&prepared);
        check_tokens(tokens, &limits)?;
        let response =
            score_request(scorer, "", &request, None).map_err(|e| ApiError::from(e).at(&place))?;
        for (&index, result) in indices.iter().zip(&response.results) {
            rewards[index] = result.endo;
        }
    }
    Ok((rewards, tokens))
}

/// Each query scored as raw text from its first token: that token is the context, the rest the
/// (unterminated) candidate.
fn whole_queries(
    scorer: &mut Scorer<'_>,
    queries: &[String],
    limits: Limits,
) -> Result<(Vec<f64>, usize), ApiError> {
    let mut rewards = Vec::with_capacity(queries.len());
    let mut tokens = 0;
    for (index, query) in queries.iter().enumerate() {
        let place = format!("query[{index}]");
        let model = scorer.model();
        let mut all = model
            .tokenize(query, model.adds_bos(), false)
            .map_err(|e| ApiError::from(e).at(&place))?;
        if all.len() < 2 {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!("{place} has {} token(s): a reward needs a first token and at least one after it", all.len()),
            ));
        }
        let rest = all.split_off(1);
        let prepared = Prepared {
            context: all,
            candidates: vec![Candidate {
                tokens: rest,
                terminal: false,
            }],
        };
        tokens += count(&prepared);
        check_tokens(tokens, &limits)?;
        let scored = scorer
            .score(&prepared, Alpha::ONE)
            .map_err(|e| ApiError::from(e).at(&place))?;
        let values = scored
            .candidates
            .first()
            .ok_or_else(|| ApiError::internal("the scorer returned no candidate"))?;
        rewards.push(Aggregates::of(values, Alpha::ONE).endo);
    }
    Ok((rewards, tokens))
}

fn count(prepared: &Prepared) -> usize {
    prepared.context.len()
        + prepared
            .candidates
            .iter()
            .map(|c| c.tokens.len())
            .sum::<usize>()
}
