//! The rerank dialects clients already speak, all answered by one scoring of the documents as
//! answers to the query (docs/API.md, "Rerank").
//!
//! * Cohere v1/v2, Jina, vLLM, Voyage: [`RerankRequest`] → [`RerankResponse`] (`results`, and the
//!   same list as `data` for clients that read that name).
//! * Hugging Face text-embeddings-inference: [`TeiRerankRequest`] → a bare list of [`TeiRank`].
//!
//! `relevance_score` is the probability that a document is the best of the request's documents
//! under the model (a softmax of the rewards, Plackett–Luce's first choice): in 0..1, summing to 1
//! over the documents, best first. The raw reward is beside it as `reward`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::score::{Format, ScoreResponse};

/// Body of the Cohere-shaped rerank routes. Optional fields accept `null`; fields other clients
/// send (Cohere's `rank_fields`, `max_chunks_per_doc`, Voyage's `truncation`) are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RerankRequest {
    /// Model id. A name the daemon does not serve is answered by the default model (clients
    /// always send one, e.g. `rerank-english-v3.0`), echoed back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The prompt the documents answer.
    pub query: String,
    /// The candidate answers.
    pub documents: Vec<Document>,
    /// Return only the best `top_n` (Voyage: `top_k`).
    #[serde(default, alias = "top_k", skip_serializing_if = "Option::is_none")]
    pub top_n: Option<usize>,
    /// Echo each document's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_documents: Option<bool>,
    /// Score at most this many tokens of each document (Cohere v2); the rest is cut off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens_per_doc: Option<usize>,
}

/// A document: a string or `{"text": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged, expecting = "a document: a string or {\"text\": \"...\"}")]
pub enum Document {
    /// A plain string.
    Text(String),
    /// An object with the text.
    Object {
        /// The text.
        text: String,
    },
}

impl Document {
    /// The document's text, whichever shape it came in.
    pub fn into_text(self) -> String {
        match self {
            Document::Text(text) | Document::Object { text } => text,
        }
    }
}

/// Body of text-embeddings-inference's `POST /rerank`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TeiRerankRequest {
    /// The prompt the texts answer.
    pub query: String,
    /// The candidate answers.
    pub texts: Vec<String>,
    /// Return only the best `top_n`. Not a field of TEI's own API, which answers every text: LiteLLM's
    /// `huggingface` rerank provider sends it and expects the cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_n: Option<usize>,
    /// `score` is the raw reward instead of the probability of being the best text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_scores: Option<bool>,
    /// Echo each text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_text: Option<bool>,
    /// Accepted; endorm never truncates silently (too long is a 422).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate: Option<bool>,
    /// Accepted, see `truncate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncation_direction: Option<String>,
}

/// Body of `POST /rerank`, which both families send: text-embeddings-inference's has `texts`,
/// the others' `documents`.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyRerankRequest {
    /// text-embeddings-inference.
    Tei(TeiRerankRequest),
    /// Cohere, Jina, vLLM, Voyage.
    Documents(RerankRequest),
}

impl<'de> Deserialize<'de> for AnyRerankRequest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let value = serde_json::Value::deserialize(deserializer)?;
        if value.get("texts").is_some() {
            TeiRerankRequest::deserialize(value)
                .map(AnyRerankRequest::Tei)
                .map_err(D::Error::custom)
        } else {
            RerankRequest::deserialize(value)
                .map(AnyRerankRequest::Documents)
                .map_err(D::Error::custom)
        }
    }
}

/// Response of the Cohere-shaped rerank routes, results best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RerankResponse {
    /// A response id.
    pub id: String,
    /// The model name the request gave (or the model that scored, when it gave none).
    pub model: String,
    /// The documents kept, best first.
    pub results: Vec<RerankResult>,
    /// The same list, for clients that read `data` (Voyage).
    pub data: Vec<RerankResult>,
    /// Cohere's `meta`.
    pub meta: RerankMeta,
    /// Token counts (Jina, Voyage).
    pub usage: RerankUsage,
    /// How the query and documents were read (endorm's own field): `chat` (the query a user turn,
    /// each document the assistant's answer), or `raw` when the model has no chat template.
    pub format: Format,
}

/// What a rerank computed, before a dialect shapes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    /// Per kept document, best first: (index, probability of being the best, raw reward).
    pub ranked: Vec<(usize, f64, f64)>,
    /// Tokens of the query and all documents.
    pub total_tokens: usize,
    /// How they were read.
    pub format: Format,
}

impl Ranking {
    /// The ranking of a `/v1/score` response over all documents, cut to the best `top_n`.
    pub fn from_score(response: &ScoreResponse, top_n: Option<usize>) -> Self {
        let scores: Vec<f64> = response.results.iter().map(|r| r.score).collect();
        let best = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scores.iter().map(|s| (s - best).exp()).collect();
        let total: f64 = weights.iter().sum();
        let ranked = response
            .order
            .iter()
            .take(top_n.unwrap_or(scores.len()))
            .map(|&index| (index, weights[index] / total, scores[index]))
            .collect();
        Ranking {
            ranked,
            total_tokens: response.usage.total_tokens,
            format: response.format,
        }
    }

    /// The Cohere-shaped answer; `documents` are echoed when given.
    pub fn respond(
        &self,
        id: String,
        model: String,
        version: &str,
        documents: Option<&[String]>,
    ) -> RerankResponse {
        let results: Vec<RerankResult> = self
            .ranked
            .iter()
            .map(|&(index, relevance_score, reward)| RerankResult {
                index,
                relevance_score,
                reward,
                document: documents.map(|d| RerankDocument {
                    text: d[index].clone(),
                }),
            })
            .collect();
        RerankResponse {
            id,
            model,
            data: results.clone(),
            results,
            meta: RerankMeta {
                api_version: ApiVersion {
                    version: version.to_owned(),
                },
                billed_units: BilledUnits {
                    search_units: 1,
                    input_tokens: self.total_tokens,
                },
            },
            usage: RerankUsage {
                total_tokens: self.total_tokens,
            },
            format: self.format,
        }
    }

    /// The text-embeddings-inference answer.
    pub fn tei(&self, raw_scores: bool, texts: Option<&[String]>) -> Vec<TeiRank> {
        self.ranked
            .iter()
            .map(|&(index, probability, reward)| TeiRank {
                index,
                score: if raw_scores { reward } else { probability },
                text: texts.map(|t| t[index].clone()),
            })
            .collect()
    }
}

/// One kept document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RerankResult {
    /// Position of the document in the request.
    pub index: usize,
    /// The probability that it is the best of the request's documents.
    pub relevance_score: f64,
    /// Its raw reward (`endo`); compare only within one request.
    pub reward: f64,
    /// The document, when `return_documents` was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<RerankDocument>,
}

/// An echoed document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RerankDocument {
    /// Its text.
    pub text: String,
}

/// Token counts of a rerank.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RerankUsage {
    /// Tokens of the query and all documents.
    pub total_tokens: usize,
}

/// Cohere's response `meta`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RerankMeta {
    /// `{"version": "1" | "2"}`, after the route.
    pub api_version: ApiVersion,
    /// What the request would cost on Cohere's side.
    pub billed_units: BilledUnits,
}

/// Cohere's API version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiVersion {
    /// e.g. `"2"`.
    pub version: String,
}

/// Cohere's billed units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BilledUnits {
    /// Searches (one per request).
    pub search_units: u64,
    /// Tokens of the query and all documents.
    pub input_tokens: usize,
}

/// One entry of text-embeddings-inference's rerank answer (a bare list, best first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TeiRank {
    /// Position of the text in the request.
    pub index: usize,
    /// The probability that it is the best text, or its raw reward with `raw_scores`.
    pub score: f64,
    /// The text, when `return_text` was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::assert_wire;
    use super::super::score::{CandidateResult, ScoreResponse, Timings, Usage};
    use super::*;
    use crate::reward::Aggregate;

    #[test]
    fn request_takes_both_document_shapes_nulls_and_other_clients_fields() {
        let request: RerankRequest = serde_json::from_value(json!({
            "model": "rerank-v3.5", "query": "q", "documents": ["a", {"text": "b"}],
            "max_chunks_per_doc": 3, "top_n": null, "return_documents": null,
            "max_tokens_per_doc": null
        }))
        .unwrap();
        assert_eq!(
            request,
            RerankRequest {
                model: Some("rerank-v3.5".into()),
                query: "q".into(),
                documents: vec![
                    Document::Text("a".into()),
                    Document::Object { text: "b".into() }
                ],
                top_n: None,
                return_documents: None,
                max_tokens_per_doc: None,
            }
        );
        let voyage: RerankRequest = serde_json::from_value(
            json!({"query": "q", "documents": ["a"], "top_k": 2, "truncation": true}),
        )
        .unwrap();
        assert_eq!(voyage.top_n, Some(2));
        let texts: Vec<String> = request
            .documents
            .into_iter()
            .map(Document::into_text)
            .collect();
        assert_eq!(texts, ["a", "b"]);
    }

    #[test]
    fn slash_rerank_tells_the_dialects_apart_by_their_fields() {
        let tei: AnyRerankRequest =
            serde_json::from_value(json!({"query": "q", "texts": ["a"], "raw_scores": null}))
                .unwrap();
        assert!(matches!(tei, AnyRerankRequest::Tei(t) if t.texts == ["a"] && t.top_n.is_none()));
        // LiteLLM's `huggingface` provider adds `top_n` to TEI's body.
        let litellm: AnyRerankRequest = serde_json::from_value(
            json!({"query": "q", "texts": ["a", "b"], "top_n": 1, "raw_scores": false,
                   "truncation_direction": "Right", "return_text": true}),
        )
        .unwrap();
        assert!(matches!(litellm, AnyRerankRequest::Tei(t) if t.top_n == Some(1)));
        let cohere: AnyRerankRequest =
            serde_json::from_value(json!({"query": "q", "documents": ["a"]})).unwrap();
        assert!(matches!(cohere, AnyRerankRequest::Documents(r) if r.documents.len() == 1));
        let neither = serde_json::from_value::<AnyRerankRequest>(json!({"query": "q"}))
            .unwrap_err()
            .to_string();
        assert!(neither.contains("documents"), "{neither}");
    }

    #[test]
    fn a_document_of_another_shape_says_what_a_document_is() {
        let error =
            serde_json::from_value::<RerankRequest>(json!({"query": "q", "documents": [3]}))
                .unwrap_err();
        assert!(
            error.to_string().contains("a document: a string or"),
            "{error}"
        );
    }

    fn score_response() -> ScoreResponse {
        let result = |index, score| CandidateResult {
            index,
            score,
            rank: 0,
            endo: score,
            endo_mean: score,
            logprob: 0.0,
            logprob_mean: 0.0,
            endo_lc: None,
            n_tokens: 1,
            agreement: None,
            neutral: None,
            reviewer: None,
            reference: None,
            tokens: None,
        };
        ScoreResponse {
            model: "m".into(),
            aggregate: Aggregate::Endo,
            format: Format::Raw,
            reference_model: None,
            results: vec![result(0, -2.0), result(1, 1.0), result(2, 0.0)],
            order: vec![1, 2, 0],
            usage: Usage {
                total_tokens: 30,
                ..Usage::default()
            },
            timings: Timings::default(),
        }
    }

    #[test]
    fn relevance_is_the_probability_of_being_best_over_all_documents() {
        let ranking = Ranking::from_score(&score_response(), Some(2));
        let z = 1.0 + (-1.0f64).exp() + (-3.0f64).exp();
        assert_eq!(ranking.ranked.len(), 2);
        assert_eq!(ranking.ranked[0].0, 1);
        assert!((ranking.ranked[0].1 - 1.0 / z).abs() < 1e-12);
        assert!((ranking.ranked[1].1 - (-1.0f64).exp() / z).abs() < 1e-12);
        assert_eq!(ranking.ranked[1].2, 0.0);
        let all = Ranking::from_score(&score_response(), None);
        let sum: f64 = all.ranked.iter().map(|r| r.1).sum();
        assert!((sum - 1.0).abs() < 1e-12);
    }

    #[test]
    fn cohere_answer_has_id_meta_results_and_data() {
        let documents = [
            "London.".to_owned(),
            "Paris.".to_owned(),
            "Rome.".to_owned(),
        ];
        let ranking = Ranking {
            ranked: vec![(1, 0.75, 1.0)],
            total_tokens: 30,
            format: Format::Chat,
        };
        let result = json!({"index": 1, "relevance_score": 0.75, "reward": 1.0,
                            "document": {"text": "Paris."}});
        assert_wire(
            &ranking.respond("r-1".into(), "m".into(), "2", Some(&documents)),
            json!({"id": "r-1", "model": "m", "results": [result], "data": [result],
                   "meta": {"api_version": {"version": "2"},
                            "billed_units": {"search_units": 1, "input_tokens": 30}},
                   "usage": {"total_tokens": 30}, "format": "chat"}),
        );
    }

    #[test]
    fn tei_answer_is_a_bare_list() {
        let texts = ["a".to_owned(), "b".to_owned()];
        let ranking = Ranking {
            ranked: vec![(1, 0.75, -3.0), (0, 0.25, -4.0)],
            total_tokens: 9,
            format: Format::Raw,
        };
        assert_wire(
            &ranking.tei(false, Some(&texts)),
            json!([{"index": 1, "score": 0.75, "text": "b"}, {"index": 0, "score": 0.25, "text": "a"}]),
        );
        assert_wire(
            &ranking.tei(true, None),
            json!([{"index": 1, "score": -3.0}, {"index": 0, "score": -4.0}]),
        );
    }
}
