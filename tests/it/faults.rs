//! Broken on purpose (issue 14): the served model file truncated or overwritten while the daemon
//! serves it, corrupt GGUFs whose load error must name the cause, an empty conversation.

use std::io::{Seek, SeekFrom, Write};

use endorm::api::{Message, ScoreRequest};
use endorm::engine::{prepare, EngineError, Model, ModelOptions};
use serde_json::{json, Value};

use crate::common;
use crate::support::{model_path, model_section, Daemon};

/// The scores of a fixed request, as text (exact comparison).
fn control_scores(daemon: &Daemon) -> Vec<String> {
    let body = json!({"messages": [{"role": "user", "content": "What is 2+2?"}],
                      "candidates": ["4", "5", "four"]});
    let response = daemon.post("/v1/score", &body);
    assert_eq!(response.status, 200, "{}", response.text());
    let results = response.json()["results"].as_array().unwrap().clone();
    results
        .iter()
        .map(|r| {
            let score: &Value = &r["score"];
            assert!(score.is_f64(), "a finite score: {r}");
            score.to_string()
        })
        .collect()
}

#[test]
fn a_served_model_file_truncated_then_overwritten_keeps_serving_the_loaded_weights() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let copy = dir.path().join("served.gguf");
    std::fs::copy(model_path(), &copy).unwrap();
    let config = model_section("m").replace(
        &model_path().display().to_string(),
        &copy.display().to_string(),
    );
    let daemon = Daemon::start(&config, &[]);
    let before = control_scores(&daemon);

    // Truncated in place: with the weights mapped this was a SIGBUS on the next request.
    let file = std::fs::OpenOptions::new().write(true).open(&copy).unwrap();
    file.set_len(4096).unwrap();
    drop(file);
    assert_eq!(
        control_scores(&daemon),
        before,
        "log:\n{}",
        daemon.log_text()
    );

    // Overwritten in place with other bytes of the same length: this was a 200 with null scores.
    let size = std::fs::metadata(model_path()).unwrap().len();
    let mut file = std::fs::OpenOptions::new().write(true).open(&copy).unwrap();
    file.seek(SeekFrom::Start(0)).unwrap();
    let junk = vec![0x5a_u8; 1 << 20];
    let mut written = 0;
    while written < size {
        let n = junk.len().min((size - written) as usize);
        file.write_all(&junk[..n]).unwrap();
        written += n as u64;
    }
    drop(file);
    assert_eq!(
        control_scores(&daemon),
        before,
        "log:\n{}",
        daemon.log_text()
    );
    assert_eq!(daemon.get("/health").status, 200);
}

fn load_error(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("broken.gguf");
    std::fs::write(&path, bytes).unwrap();
    match Model::load(&path, &ModelOptions::default()) {
        Ok(_) => panic!("a broken GGUF loaded"),
        Err(error @ EngineError::Load { .. }) => error.to_string(),
        Err(other) => panic!("not a load error: {other}"),
    }
}

fn header(version: u32, n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(version.to_le_bytes());
    bytes.extend(n_tensors.to_le_bytes());
    bytes.extend(n_kv.to_le_bytes());
    bytes
}

#[test]
fn a_corrupt_gguf_names_its_cause() {
    let version = load_error(&[header(7, 0, 0), vec![0; 64]].concat());
    assert!(version.contains("GGUF version is 7"), "{version}");

    let absurd = load_error(&[header(3, 1 << 40, 1 << 40), vec![0; 64]].concat());
    assert!(absurd.contains("claims 1099511627776 tensors"), "{absurd}");

    let short = load_error(b"GGUF\x03\0");
    assert!(short.contains("truncated"), "{short}");

    let zip = load_error(b"PK\x03\x04 not a model at all, but long enough to have a header");
    assert!(zip.contains("not a GGUF file"), "{zip}");

    // A real model cut short: its header is fine, its tensors are not in the file. The cause is
    // llama.cpp's own log line, not only "null result".
    let model = std::fs::read(model_path()).unwrap();
    let truncated = load_error(&model[..model.len() / 2]);
    assert!(
        !truncated.ends_with("null result from llama cpp (is it a GGUF file llama.cpp supports?)"),
        "{truncated}"
    );
    assert!(truncated.contains("llama.cpp"), "{truncated}");
    eprintln!("truncated: {truncated}");
}

#[test]
fn a_corrupt_gguf_shows_its_cause_in_health() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let broken = dir.path().join("broken.gguf");
    std::fs::write(&broken, [header(3, u64::MAX, 5), vec![0; 64]].concat()).unwrap();
    let config = model_section("m").replace(
        &model_path().display().to_string(),
        &broken.display().to_string(),
    );
    // Beside a model that loads: the daemon serves on, and /health names the cause.
    let daemon = Daemon::spawn(&format!("{config}\n{}", model_section("ok")), &[]);
    daemon.wait_for("the model to fail", |d| {
        d.try_get("/health")
            .is_some_and(|r| r.json()["models"][0]["state"] == "failed")
    });
    let health = daemon.get("/health").json();
    assert_eq!(health["models"][0]["id"], "m", "{health}");
    let error = health["models"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("more than a file"), "{health}");

    // Alone, it stops `serve` at start-up, with the cause and the fix.
    let mut alone = Daemon::spawn(&config, &[]);
    let status = alone.wait_exit(60);
    assert!(!status.success());
    let log = alone.log_text();
    assert!(
        log.contains("no model could be loaded") && log.contains("more than a file"),
        "{log}"
    );
    assert!(log.contains("--model PATH"), "{log}");
    assert!(!alone.socket.exists(), "the socket is removed: {log}");
}

#[test]
fn an_empty_conversation_is_refused_as_such() {
    let request = ScoreRequest {
        messages: Some(Vec::<Message>::new()),
        candidates: vec!["Hello".into()],
        ..ScoreRequest::default()
    };
    let error = prepare::score_request(common::model(), &request, None).unwrap_err();
    assert!(error.is_input_error(), "{error}");
    assert!(error.to_string().contains("`messages` is empty"), "{error}");
    // A principle alone does not make a conversation either.
    let error = prepare::score_request(common::model(), &request, Some("Be helpful.")).unwrap_err();
    assert!(error.to_string().contains("`messages` is empty"), "{error}");
}

/// Found by the HTTP fuzzer: `"alpha": 1.7e308` passed as "finite and > 0" and every score came
/// out -inf (a 500 `scores_not_finite`); `1e-300` gave NaN. Both are the caller's fault: a 400.
#[test]
fn an_alpha_that_overflows_the_scores_is_refused() {
    for alpha in [1.7e308, 1e7, 1e-300, 1e-7] {
        let request = ScoreRequest {
            prompt: Some("Hi".into()),
            candidates: vec!["Hello".into()],
            alpha: Some(alpha),
            ..ScoreRequest::default()
        };
        let error = endorm::engine::PreparedRequest::new(common::model(), None, &request, None)
            .unwrap_err();
        assert!(error.is_input_error(), "{error}");
        assert!(
            error.to_string().contains("`alpha` must be from"),
            "{error}"
        );
        // A number as a person writes it, not 309 digits.
        assert!(error.to_string().len() < 100, "{error}");
    }
}
