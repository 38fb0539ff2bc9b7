//! `POST /v1/completions`: the scoring subset of OpenAI's legacy completions (what
//! lm-evaluation-harness's `local-completions` sends for log-likelihoods).
//!
//! Only `echo: true` with `max_tokens` 0 or 1 and `logprobs` 0..20. With `max_tokens: 1` one greedy
//! token is appended to each prompt with its log-prob; the harness drops that last entry.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::Response;
use axum::Json;

use crate::api::{
    CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, FinishReason,
    Prompt, TopLogprobs,
};
use crate::engine::prepare::{self, SequenceText};
use crate::engine::{EngineError, LogprobsInput, SequenceLogprobs};
use crate::server::body::JsonBody;
use crate::server::client::Client;
use crate::server::dispatch::{blocking, Target};
use crate::server::error::ApiError;
use crate::server::middleware::{with_tokens, TokenCount};
use crate::server::App;

/// The most `logprobs` alternatives per position.
const MAX_LOGPROBS: u32 = 20;

const SUPPORTED: &str = "endorm's /v1/completions only scores text: send \"echo\": true, \
                         \"max_tokens\": 0 or 1 and \"logprobs\": 0..20 (sampling, max_tokens > 1, \
                         n > 1 and streaming are not supported)";

/// `POST /v1/completions`.
pub async fn completions(
    State(app): State<Arc<App>>,
    Client(client): Client,
    JsonBody(request): JsonBody<CompletionRequest>,
) -> Result<Response, ApiError> {
    let max_tokens = request.max_tokens.unwrap_or(0);
    let supported = request.echo
        && max_tokens <= 1
        && request.logprobs.is_none_or(|k| k <= MAX_LOGPROBS)
        && request.n.is_none_or(|n| n == 1)
        && request.stream != Some(true)
        && !(max_tokens == 1 && request.temperature.is_some_and(|t| t > 0.0));
    if !supported {
        return Err(ApiError::bad_request("unsupported", SUPPORTED));
    }
    let count = match &request.prompt {
        Prompt::Text(_) | Prompt::Tokens(_) => 1,
        Prompt::Texts(texts) => texts.len(),
        Prompt::TokenLists(lists) => lists.len(),
    };
    if count == 0 {
        return Err(ApiError::bad_request(
            "invalid_request",
            "`prompt` is empty",
        ));
    }
    let target = Target::of(&app, request.model.as_deref(), count, "prompts")?;
    let bytes = match &request.prompt {
        Prompt::Text(text) => text.len(),
        Prompt::Texts(texts) => texts.iter().map(String::len).sum(),
        // Token ids are counted as they are: one token each, checked below.
        Prompt::Tokens(_) | Prompt::TokenLists(_) => 0,
    };
    target.check_text(bytes, 0)?;
    let greedy = max_tokens == 1;
    let model = target.model();
    let prompt = request.prompt;
    let (sequences, texts) = blocking(move || {
        let texts: Vec<Option<String>> = match &prompt {
            Prompt::Text(text) => vec![Some(text.clone())],
            Prompt::Texts(texts) => texts.iter().cloned().map(Some).collect(),
            Prompt::Tokens(_) | Prompt::TokenLists(_) => vec![None; count],
        };
        let items: Vec<SequenceText<'_>> = match &prompt {
            Prompt::Text(text) => vec![SequenceText::Text(text)],
            Prompt::Texts(texts) => texts.iter().map(|t| SequenceText::Text(t)).collect(),
            Prompt::Tokens(ids) => vec![SequenceText::Ids(ids)],
            Prompt::TokenLists(lists) => lists.iter().map(|l| SequenceText::Ids(l)).collect(),
        };
        let sequences = items
            .into_iter()
            .enumerate()
            .map(|(index, item)| {
                let label = format!("prompt[{index}]");
                let tokens = prepare::sequence(&model, item).map_err(|e| e.at(label.clone()))?;
                Ok((label, tokens))
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        Ok((sequences, texts))
    })
    .await?;
    let prompt_tokens: usize = sequences.iter().map(|(_, tokens)| tokens.len()).sum();
    target.check_tokens(prompt_tokens + sequences.len() * usize::from(greedy))?;
    let longest = sequences.iter().map(|(_, tokens)| tokens.len()).max();
    target.check_job_tokens(longest.unwrap_or(0) + usize::from(greedy))?;
    // One job per prompt, so other clients' requests run between them (fairness).
    let top_k = request.logprobs.map(|k| k as usize);
    let inputs = sequences
        .into_iter()
        .map(|sequence| LogprobsInput {
            sequences: vec![sequence],
            top_k,
            greedy,
        })
        .collect();
    let outputs = target
        .each(inputs, |worker, input| worker.logprobs(&client, input))
        .await?;
    let choices: Vec<CompletionChoice> = outputs
        .into_iter()
        .flatten()
        .zip(texts)
        .enumerate()
        .map(|(index, (sequence, text))| choice(index, sequence, text, request.logprobs, greedy))
        .collect();
    let completion_tokens = choices.len() * usize::from(greedy);
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let response = CompletionResponse::new(
        target.id(),
        created,
        choices,
        prompt_tokens,
        completion_tokens,
    );
    let tokens = TokenCount {
        tokens: prompt_tokens + completion_tokens,
        cached: 0,
    };
    Ok(with_tokens(Json(response), tokens))
}

/// One choice: the echoed prompt (plus the greedy token) and, when asked, its logprobs.
fn choice(
    index: usize,
    sequence: SequenceLogprobs,
    text: Option<String>,
    logprobs: Option<u32>,
    greedy: bool,
) -> CompletionChoice {
    let text = match text {
        Some(mut full) => {
            if greedy {
                full.push_str(sequence.texts.last().map_or("", String::as_str));
            }
            full
        }
        None => sequence.texts.concat(),
    };
    let logprobs = logprobs.map(|_| {
        let positions = sequence
            .logprobs
            .into_iter()
            .zip(sequence.top)
            .map(|(logprob, top)| (logprob, top.into_iter().collect::<TopLogprobs>()))
            .collect();
        CompletionLogprobs::new(sequence.texts, positions)
    });
    CompletionChoice {
        index,
        text,
        logprobs,
        finish_reason: FinishReason::Length,
    }
}
