//! `POST /v1/rerank`: Cohere / Jina / llama-server shape.
//!
//! The other dialects of issue 12 fit these types without changing today's JSON: Cohere's `id` and
//! `meta` are optional fields of [`RerankResponse`] (absent unless set); text-embeddings-inference
//! answers a bare list of [`TeiRank`] (`Vec<TeiRank>`, each made from a [`RerankResult`]); a
//! Voyage-style `data` list holds the same [`RerankResult`]s under another name.

use serde::{Deserialize, Serialize};

use super::score::ScoreResponse;

/// Body of `POST /v1/rerank`. Fields other clients send (e.g. Cohere's `max_chunks_per_doc`) are
/// ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankRequest {
    /// Model id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The prompt the documents answer.
    pub query: String,
    /// The candidate answers.
    pub documents: Vec<Document>,
    /// Return only the best `top_n`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_n: Option<usize>,
    /// Echo each document's text.
    #[serde(default)]
    pub return_documents: bool,
}

/// A document: a string or `{"text": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// Response of `POST /v1/rerank`: `{"model", "results", "usage"}`, results best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankResponse {
    /// A response id (Cohere); absent today.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The model that scored.
    pub model: String,
    /// The documents kept, best first.
    pub results: Vec<RerankResult>,
    /// Cohere's `meta` (API version, billed units); absent today.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<RerankMeta>,
    /// Token counts.
    pub usage: RerankUsage,
}

impl RerankResponse {
    /// The rerank answer of a `/v1/score` response over `documents` (scored in request order):
    /// the best `top_n` (all when `None`), each with its `score` as `relevance_score` and, with
    /// `return_documents`, its text.
    pub fn from_score(
        response: &ScoreResponse,
        documents: &[String],
        top_n: Option<usize>,
        return_documents: bool,
    ) -> Self {
        let results = response
            .order
            .iter()
            .take(top_n.unwrap_or(documents.len()))
            .map(|&index| RerankResult {
                index,
                relevance_score: response.results[index].score,
                document: return_documents.then(|| RerankDocument {
                    text: documents[index].clone(),
                }),
            })
            .collect();
        RerankResponse {
            id: None,
            model: response.model.clone(),
            results,
            meta: None,
            usage: RerankUsage {
                total_tokens: response.usage.total_tokens,
            },
        }
    }
}

/// One kept document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankResult {
    /// Position of the document in the request.
    pub index: usize,
    /// Its score (today the `endo` reward); higher is better.
    pub relevance_score: f64,
    /// The document, when `return_documents` was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<RerankDocument>,
}

/// An echoed document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RerankDocument {
    /// Its text.
    pub text: String,
}

/// Token counts of a rerank.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RerankUsage {
    /// Tokens of the query and all documents.
    pub total_tokens: usize,
}

/// Cohere's response `meta`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RerankMeta {
    /// `{"version": "2"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<ApiVersion>,
    /// What the request would cost on Cohere's side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billed_units: Option<BilledUnits>,
}

/// Cohere's API version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiVersion {
    /// e.g. `"2"`.
    pub version: String,
}

/// Cohere's billed units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BilledUnits {
    /// Searches (one per request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_units: Option<u64>,
    /// Input tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
}

/// One entry of text-embeddings-inference's rerank answer (a bare list, best first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeiRank {
    /// Position of the text in the request.
    pub index: usize,
    /// Its score.
    pub score: f64,
    /// The text, when `return_text` was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl From<RerankResult> for TeiRank {
    fn from(result: RerankResult) -> Self {
        TeiRank {
            index: result.index,
            score: result.relevance_score,
            text: result.document.map(|d| d.text),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::assert_wire;
    use super::super::score::{CandidateResult, ScoreResponse, Timings, Usage};
    use super::*;
    use crate::reward::Aggregate;

    #[test]
    fn request_takes_both_document_shapes_and_ignores_other_fields() {
        let request: RerankRequest = serde_json::from_value(json!({
            "query": "q", "documents": ["a", {"text": "b"}], "max_chunks_per_doc": 3
        }))
        .unwrap();
        assert_eq!(
            request,
            RerankRequest {
                model: None,
                query: "q".into(),
                documents: vec![
                    Document::Text("a".into()),
                    Document::Object { text: "b".into() }
                ],
                top_n: None,
                return_documents: false,
            }
        );
        assert_wire(
            &request,
            json!({"query": "q", "documents": ["a", {"text": "b"}], "return_documents": false}),
        );
        let full = RerankRequest {
            model: Some("m".into()),
            top_n: Some(1),
            return_documents: true,
            ..request
        };
        assert_wire(
            &full,
            json!({"model": "m", "query": "q", "documents": ["a", {"text": "b"}], "top_n": 1,
                   "return_documents": true}),
        );
        let texts: Vec<String> = full
            .documents
            .into_iter()
            .map(Document::into_text)
            .collect();
        assert_eq!(texts, ["a", "b"]);
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
            n_tokens: 1,
            tokens: None,
        };
        ScoreResponse {
            model: "m".into(),
            aggregate: Aggregate::Endo,
            results: vec![result(0, -2.5), result(1, 1.25), result(2, 0.5)],
            order: vec![1, 2, 0],
            usage: Usage {
                total_tokens: 30,
                ..Usage::default()
            },
            timings: Timings::default(),
        }
    }

    #[test]
    fn response_is_todays_json() {
        let documents = [
            "London.".to_owned(),
            "Paris.".to_owned(),
            "Rome.".to_owned(),
        ];
        let response = RerankResponse::from_score(&score_response(), &documents, Some(2), true);
        assert_wire(
            &response,
            json!({"model": "m", "results": [
                {"index": 1, "relevance_score": 1.25, "document": {"text": "Paris."}},
                {"index": 2, "relevance_score": 0.5, "document": {"text": "Rome."}}],
                "usage": {"total_tokens": 30}}),
        );
        let all = RerankResponse::from_score(&score_response(), &documents, None, false);
        assert_wire(
            &all,
            json!({"model": "m", "results": [
                {"index": 1, "relevance_score": 1.25},
                {"index": 2, "relevance_score": 0.5},
                {"index": 0, "relevance_score": -2.5}],
                "usage": {"total_tokens": 30}}),
        );
    }

    #[test]
    fn cohere_fields_fit_when_set() {
        let mut response = RerankResponse::from_score(&score_response(), &[], Some(0), false);
        response.id = Some("r-1".into());
        response.meta = Some(RerankMeta {
            api_version: Some(ApiVersion {
                version: "2".into(),
            }),
            billed_units: Some(BilledUnits {
                search_units: Some(1),
                input_tokens: None,
            }),
        });
        assert_wire(
            &response,
            json!({"id": "r-1", "model": "m", "results": [],
                   "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
                   "usage": {"total_tokens": 30}}),
        );
    }

    #[test]
    fn tei_ranks_come_from_results() {
        let documents = ["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let response = RerankResponse::from_score(&score_response(), &documents, Some(1), true);
        let tei: Vec<TeiRank> = response.results.into_iter().map(TeiRank::from).collect();
        assert_wire(&tei, json!([{"index": 1, "score": 1.25, "text": "b"}]));
        assert_wire(
            &TeiRank {
                index: 0,
                score: -1.0,
                text: None,
            },
            json!({"index": 0, "score": -1.0}),
        );
    }
}
