//! endorm's numbers against reference values computed by an independent implementation
//! (tests/data/README.md): token ids exactly, per-token values and aggregates within the stated
//! tolerances of llama.cpp run elsewhere on the same GGUF, and of an fp32 transformers run.

mod common;

use endorm::api::ScoreRequest;
use endorm::engine::{prepare, score_request};
use serde_json::Value;

const PER_TOKEN_FIELDS: [&str; 4] = ["logprob", "q", "v_next", "reward"];

fn reference() -> Vec<Value> {
    let text = std::fs::read_to_string(common::data_dir().join("smollm2-reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The `/v1/score` request of a reference case (its inputs minus the reference-only fields).
fn request_of(case: &Value) -> ScoreRequest {
    let mut fields = case.as_object().unwrap().clone();
    for key in ["name", "context_text", "context_ids", "results"] {
        fields.remove(key);
    }
    let mut request: ScoreRequest = serde_json::from_value(Value::Object(fields)).unwrap();
    request.return_tokens = true;
    request
}

fn ids(values: &Value) -> Vec<i32> {
    values.as_array().unwrap().iter().map(|v| v.as_i64().unwrap() as i32).collect()
}

#[test]
fn cases_file_and_reference_agree() {
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(common::data_dir().join("cases.json")).unwrap()).unwrap();
    let reference = reference();
    assert_eq!(cases.len(), reference.len());
    for (case, expected) in cases.iter().zip(&reference) {
        assert_eq!(case["name"], expected["name"]);
        assert_eq!(case["candidates"], expected["candidates"]);
    }
}

#[test]
fn context_and_candidate_token_ids_match_exactly() {
    for case in reference() {
        let name = case["name"].as_str().unwrap();
        let prepared = prepare(common::model(), &request_of(&case), None).unwrap();
        let context: Vec<i32> = prepared.context.iter().map(|t| t.0).collect();
        assert_eq!(context, ids(&case["context_ids"]), "{name}: context ids");
        for (i, (candidate, expected)) in prepared.candidates.iter().zip(case["results"].as_array().unwrap()).enumerate() {
            let expected_ids: Vec<i32> = expected["tokens"].as_array().unwrap().iter().map(|t| t["id"].as_i64().unwrap() as i32).collect();
            let got: Vec<i32> = candidate.tokens.iter().map(|t| t.0).collect();
            assert_eq!(got, expected_ids, "{name}: candidate {i} ids");
        }
    }
}

/// Per-token |Δ| and aggregate |Δ| against one reference implementation.
struct Deltas {
    per_token: Vec<f64>,
    aggregates: Vec<f64>,
}

fn deltas(implementation: &str) -> Deltas {
    let mut scorer = common::scorer(common::options());
    let mut deltas = Deltas {
        per_token: Vec::new(),
        aggregates: Vec::new(),
    };
    for case in reference() {
        let name = case["name"].as_str().unwrap();
        let response = score_request(&mut scorer, "test", &request_of(&case), None).unwrap();
        for (result, expected) in response.results.iter().zip(case["results"].as_array().unwrap()) {
            let tokens = result.tokens.as_ref().unwrap();
            let expected_tokens = expected["tokens"].as_array().unwrap();
            assert_eq!(tokens.len(), expected_tokens.len(), "{name}");
            for (token, want) in tokens.iter().zip(expected_tokens) {
                assert_eq!(token.text, want["text"].as_str().unwrap(), "{name}: token text");
                let got = [token.logprob, token.q, token.v_next, token.reward];
                for (field, got) in PER_TOKEN_FIELDS.iter().zip(got) {
                    let want = want[implementation][field].as_f64().unwrap();
                    deltas.per_token.push((got - want).abs());
                }
            }
            let sums = &expected[implementation];
            for (got, field) in [
                (result.endo, "endo"),
                (result.logprob, "logprob"),
                (result.endo_mean, "endo_mean"),
                (result.logprob_mean, "logprob_mean"),
            ] {
                deltas.aggregates.push((got - sums[field].as_f64().unwrap()).abs());
            }
        }
    }
    deltas
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(0.0, f64::max)
}

#[test]
fn values_match_llama_cpp_reference() {
    let d = deltas("llamacpp");
    assert!(d.per_token.len() > 100, "too few values compared");
    assert!(max(&d.per_token) <= 0.02, "per-token max |Δ| = {}", max(&d.per_token));
    assert!(max(&d.aggregates) <= 0.1, "aggregate max |Δ| = {}", max(&d.aggregates));
}

#[test]
fn values_match_fp32_reference_within_quantisation_noise() {
    let d = deltas("fp32");
    let mean = d.per_token.iter().sum::<f64>() / d.per_token.len() as f64;
    assert!(max(&d.per_token) <= 1.0, "per-token max |Δ| = {}", max(&d.per_token));
    assert!(mean <= 0.15, "per-token mean |Δ| = {mean}");
    assert!(max(&d.aggregates) <= 2.5, "aggregate max |Δ| = {}", max(&d.aggregates));
}

