//! `POST /v1/completions`: the scoring subset of OpenAI's legacy completions (what
//! lm-evaluation-harness's `local-completions` sends for log-likelihoods).

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use utoipa::ToSchema;

/// Body of `/v1/completions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    /// Model id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// One prompt or several.
    pub prompt: Prompt,
    /// Must be true.
    #[serde(default)]
    pub echo: bool,
    /// 0 or 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Alternatives per position, 0..20; absent: no logprobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<u32>,
    /// 0 (greedy) or absent when `max_tokens` is 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Must be 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// Must be false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Ignored (nothing is sampled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// Ignored (nothing is sampled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Ignored (at most one token is generated): any JSON value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Value>,
    /// Ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// The `prompt` field's four shapes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(
    untagged,
    expecting = "`prompt` must be a string, a list of strings, a list of token ids or a list of token-id lists"
)]
pub enum Prompt {
    /// One text.
    Text(String),
    /// Several texts.
    Texts(Vec<String>),
    /// One prompt as token ids.
    Tokens(Vec<i64>),
    /// Several prompts as token ids.
    TokenLists(Vec<Vec<i64>>),
}

/// Response of `/v1/completions`: `{"id", "object", "created", "model", "choices", "usage"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CompletionResponse {
    /// `cmpl-endorm-<created>`.
    pub id: String,
    /// `text_completion`.
    pub object: String,
    /// Unix time in seconds.
    pub created: u64,
    /// The model that scored.
    pub model: String,
    /// One per prompt, in request order.
    pub choices: Vec<CompletionChoice>,
    /// Token counts.
    pub usage: CompletionUsage,
}

impl CompletionResponse {
    /// The response of `model` at Unix time `created`; `completion_tokens` is the number of
    /// greedy tokens appended (one per choice with `max_tokens: 1`, else 0).
    pub fn new(
        model: impl Into<String>,
        created: u64,
        choices: Vec<CompletionChoice>,
        prompt_tokens: usize,
        completion_tokens: usize,
    ) -> Self {
        CompletionResponse {
            id: format!("cmpl-endorm-{created}"),
            object: "text_completion".to_owned(),
            created,
            model: model.into(),
            choices,
            usage: CompletionUsage {
                prompt_tokens,
                completion_tokens,
                total_tokens: prompt_tokens + completion_tokens,
            },
        }
    }
}

/// One prompt's answer: the echoed prompt (plus the greedy token) and, when asked, its logprobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CompletionChoice {
    /// Position of the prompt in the request.
    pub index: usize,
    /// The prompt's text, plus the greedy token's with `max_tokens: 1`.
    pub text: String,
    /// `null` unless `logprobs` was asked for.
    pub logprobs: Option<CompletionLogprobs>,
    /// Always `length`.
    pub finish_reason: FinishReason,
}

/// Why a choice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// `max_tokens` was reached (always, for scoring).
    Length,
}

/// The log-probs of every token of a choice; the first position has none (`null`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CompletionLogprobs {
    /// Each token's text.
    pub tokens: Vec<String>,
    /// Each token's log-prob given the tokens before it; `null` first.
    pub token_logprobs: Vec<Option<f64>>,
    /// The `k` likeliest tokens at each position; `null` first.
    #[schema(value_type = Vec<Option<std::collections::BTreeMap<String, f64>>>)]
    pub top_logprobs: Vec<Option<TopLogprobs>>,
    /// Each token's offset in characters into `text`.
    pub text_offset: Vec<usize>,
}

impl CompletionLogprobs {
    /// The log-probs of `tokens` (each token's text): `positions` holds, for every token after the
    /// first, its log-prob and the alternatives at its position. The first position is `null`
    /// and the text offsets count characters.
    pub fn new(tokens: Vec<String>, positions: Vec<(f64, TopLogprobs)>) -> Self {
        let mut offset = 0;
        let text_offset = tokens
            .iter()
            .map(|text| {
                let here = offset;
                offset += text.chars().count();
                here
            })
            .collect();
        let mut token_logprobs = Vec::with_capacity(positions.len() + 1);
        let mut top_logprobs = Vec::with_capacity(positions.len() + 1);
        token_logprobs.push(None);
        top_logprobs.push(None);
        for (logprob, top) in positions {
            token_logprobs.push(Some(logprob));
            top_logprobs.push(Some(top));
        }
        CompletionLogprobs {
            tokens,
            token_logprobs,
            top_logprobs,
            text_offset,
        }
    }
}

/// `{token_text: logprob}` in order, best first; when two tokens have the same text the first
/// (likelier) one is kept.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopLogprobs(Vec<(String, f64)>);

impl TopLogprobs {
    /// No alternatives yet.
    pub fn new() -> Self {
        TopLogprobs::default()
    }

    /// Adds `text` with `logprob` unless a token with that text is already there.
    pub fn insert_first(&mut self, text: String, logprob: f64) {
        if !self.0.iter().any(|(t, _)| *t == text) {
            self.0.push((text, logprob));
        }
    }

    /// The alternatives in order.
    pub fn entries(&self) -> &[(String, f64)] {
        &self.0
    }
}

impl Serialize for TopLogprobs {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (text, logprob) in &self.0 {
            map.serialize_entry(text, logprob)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for TopLogprobs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = TopLogprobs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from token text to log-prob")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLogprobs, A::Error> {
                let mut top = TopLogprobs::new();
                while let Some((text, logprob)) = map.next_entry::<String, f64>()? {
                    top.insert_first(text, logprob);
                }
                Ok(top)
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

impl FromIterator<(String, f64)> for TopLogprobs {
    fn from_iter<I: IntoIterator<Item = (String, f64)>>(iter: I) -> Self {
        let mut top = TopLogprobs::new();
        for (text, logprob) in iter {
            top.insert_first(text, logprob);
        }
        top
    }
}

/// Token counts of a completions request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CompletionUsage {
    /// Tokens of all prompts.
    pub prompt_tokens: usize,
    /// Greedy tokens appended.
    pub completion_tokens: usize,
    /// `prompt_tokens + completion_tokens`.
    pub total_tokens: usize,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::assert_wire;
    use super::*;

    #[test]
    fn request_round_trips_and_refuses_unknown_fields() {
        let request: CompletionRequest = serde_json::from_value(json!({
            "model": "m", "prompt": "The capital", "echo": true, "max_tokens": 1, "logprobs": 3,
            "temperature": 0.0, "n": 1, "stream": false, "seed": 1234, "top_p": 1.0,
            "stop": ["\n"], "user": "u"
        }))
        .unwrap();
        assert_eq!(request.prompt, Prompt::Text("The capital".into()));
        assert_wire(
            &request,
            json!({"model": "m", "prompt": "The capital", "echo": true, "max_tokens": 1,
                   "logprobs": 3, "temperature": 0.0, "n": 1, "stream": false, "seed": 1234,
                   "top_p": 1.0, "stop": ["\n"], "user": "u"}),
        );
        let minimal: CompletionRequest = serde_json::from_value(json!({"prompt": [1, 2]})).unwrap();
        assert_wire(&minimal, json!({"prompt": [1, 2], "echo": false}));
        let error =
            serde_json::from_value::<CompletionRequest>(json!({"prompt": "x", "best_of": 2}))
                .unwrap_err();
        assert!(error.to_string().contains("best_of"), "{error}");
    }

    #[test]
    fn prompt_takes_four_shapes() {
        for (value, prompt) in [
            (json!("a"), Prompt::Text("a".into())),
            (
                json!(["a", "b"]),
                Prompt::Texts(vec!["a".into(), "b".into()]),
            ),
            (json!([1, 2]), Prompt::Tokens(vec![1, 2])),
            (
                json!([[1], [2, 3]]),
                Prompt::TokenLists(vec![vec![1], vec![2, 3]]),
            ),
        ] {
            assert_wire(&prompt, value);
        }
        let error = serde_json::from_value::<Prompt>(json!({"a": 1})).unwrap_err();
        assert!(error.to_string().starts_with("`prompt` must be"), "{error}");
    }

    #[test]
    fn response_is_todays_json() {
        let top = |entries: &[(&str, f64)]| -> TopLogprobs {
            entries.iter().map(|&(t, l)| (t.to_owned(), l)).collect()
        };
        let logprobs = CompletionLogprobs::new(
            vec!["The".into(), " café".into(), " is".into()],
            vec![
                (
                    -1.5,
                    top(&[(" cafe", -0.5), (" café", -1.5), (" cafe", -2.0)]),
                ),
                (-0.25, top(&[(" is", -0.25)])),
            ],
        );
        let response = CompletionResponse::new(
            "m",
            1_700_000_000,
            vec![
                CompletionChoice {
                    index: 0,
                    text: "The café is".into(),
                    logprobs: Some(logprobs),
                    finish_reason: FinishReason::Length,
                },
                CompletionChoice {
                    index: 1,
                    text: "Hi".into(),
                    logprobs: None,
                    finish_reason: FinishReason::Length,
                },
            ],
            4,
            1,
        );
        assert_wire(
            &response,
            json!({
                "id": "cmpl-endorm-1700000000",
                "object": "text_completion",
                "created": 1_700_000_000,
                "model": "m",
                "choices": [
                    {"index": 0, "text": "The café is", "logprobs": {
                        "tokens": ["The", " café", " is"],
                        "token_logprobs": [null, -1.5, -0.25],
                        "top_logprobs": [null, {" cafe": -0.5, " café": -1.5}, {" is": -0.25}],
                        "text_offset": [0, 3, 8]},
                     "finish_reason": "length"},
                    {"index": 1, "text": "Hi", "logprobs": null, "finish_reason": "length"}
                ],
                "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}
            }),
        );
    }

    #[test]
    fn top_logprobs_keep_the_first_of_equal_texts_in_order() {
        let top: TopLogprobs =
            serde_json::from_str(r#"{"b": -1.0, "a": -2.0, "b": -3.0}"#).unwrap();
        assert_eq!(
            top.entries(),
            [("b".to_owned(), -1.0), ("a".to_owned(), -2.0)]
        );
        assert_eq!(
            serde_json::to_string(&top).unwrap(),
            r#"{"b":-1.0,"a":-2.0}"#
        );
    }

    #[test]
    fn a_log_prob_that_is_not_a_number_is_null_as_before() {
        let logprobs = CompletionLogprobs::new(
            vec!["a".into(), "b".into()],
            vec![(f64::NAN, TopLogprobs::new())],
        );
        assert_eq!(
            serde_json::to_value(&logprobs).unwrap(),
            json!({"tokens": ["a", "b"], "token_logprobs": [null, null],
                   "top_logprobs": [null, {}], "text_offset": [0, 1]})
        );
    }
}
