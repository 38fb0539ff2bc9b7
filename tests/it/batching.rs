//! Continuous batching in the real daemon: concurrent requests share passes, and each gets exactly
//! the values it gets alone (with `n_batch` at most 63, see `ContextOptions::n_batch`).

use serde_json::{json, Value};

use crate::support::{model_path, Daemon};

const ID: &str = "smollm2-135m-instruct";

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[test]
fn concurrent_requests_share_passes_and_get_the_values_they_get_alone() {
    let config = format!(
        "[models.{ID}]\npath = {:?}\nn_ctx = 2048\nn_batch = 63\nn_threads = 2\n\
         max_sequences = 32\nbatching = true\n",
        model_path().display().to_string()
    );
    let daemon = Daemon::start(&config, &[]);
    let body = |i: usize| {
        let prompt = format!("Note {i}. ").repeat(1 + i % 4) + &format!("What is {i} plus {i}?");
        json!({"format": "raw", "prompt": prompt, "return_tokens": true,
               "candidates": [format!(" {}", 2 * i), format!(" {}", 2 * i + 1), " I do not know."]})
    };
    let alone: Vec<Value> = (0..16).map(|i| daemon.ok("/v1/score", &body(i))).collect();
    let together: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let daemon = &daemon;
                scope.spawn(move || daemon.ok("/v1/score", &body(i)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a["order"], b["order"], "request {i}");
        let results = |v: &Value| v["results"].as_array().cloned().unwrap_or_default();
        for (x, y) in results(a).iter().zip(&results(b)) {
            assert_eq!(x["endo"], y["endo"], "request {i}");
            assert_eq!(x["tokens"], y["tokens"], "request {i}");
        }
    }
    let metrics = daemon.get("/metrics").text();
    let batched = metric(&metrics, "endorm_batched_requests_total{");
    assert!(batched >= 2.0, "no pass was shared:\n{metrics}");
}
