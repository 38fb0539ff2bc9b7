//! The real `endorm serve` binary on the real default model, one daemon shared by these tests:
//! every route's success path (checked against the offline scorer, the same code path), every
//! error status of API.md provoked for real, 32 concurrent clients, a second instance refused,
//! and each curl example of docs/SERVER.md run as written.

use std::sync::OnceLock;

use serde_json::{json, Value};

use crate::common;
use crate::support::{long_text, model_section, Daemon};
use endorm::api::{Format, ScoreRequest, ScoreResponse};
use endorm::engine::prepare;
use endorm::reward::{consensus, Aggregates, Alpha};

const ID: &str = "smollm2-135m-instruct";
const TOLERANCE: f64 = 1e-4;

/// The shared daemon: small limits so that the limit errors are cheap to provoke.
fn daemon() -> &'static Daemon {
    static DAEMON: OnceLock<Daemon> = OnceLock::new();
    DAEMON.get_or_init(|| {
        let config = format!(
            "[server]\nmax_body_bytes = 65536\nmax_candidates = 8\nmax_tokens = 4000\n\n{}",
            model_section(ID)
        );
        Daemon::start(&config, &[])
    })
}

/// The offline scorer's response for the same request (same model, context size and threads).
fn offline(request: &ScoreRequest) -> ScoreResponse {
    let mut scorer = common::scorer(common::options());
    scorer
        .score_request(ID, request, None)
        .expect("offline score")
}

fn assert_close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() < TOLERANCE, "{what}: {a} vs {b}");
}

fn f(value: &Value) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("not a number: {value}"))
}

#[test]
fn health_and_models_describe_the_served_model() {
    let d = daemon();
    let health = d.get("/health");
    assert_eq!(health.status, 200);
    assert_eq!(
        health.json(),
        json!({"status": "ok", "models": [{"id": ID, "state": "ready"}]})
    );

    let models = d.get("/v1/models").json();
    assert_eq!(models["object"], "list");
    let model = &models["data"][0];
    assert_eq!(model["id"], ID);
    assert_eq!(model["object"], "model");
    assert_eq!(model["owned_by"], "endorm");
    let meta = &model["meta"];
    for field in ["n_ctx_train", "n_vocab", "n_params", "size_bytes"] {
        assert!(
            meta[field].as_u64().is_some_and(|n| n > 0),
            "{field}: {meta}"
        );
    }
    assert_eq!(meta["chat_template"], true);
    assert_eq!(meta["n_ctx"], 2048);
    // Only the file's name: the directory is no client's business.
    assert!(meta["file"]
        .as_str()
        .is_some_and(|f| f.ends_with(".gguf") && !f.contains('/')));
    assert!(meta.get("path").is_none(), "{meta}");
    // The kernels that compute it, as the engine in this test process names them (a static
    // build: the CPU it was compiled for; a dispatched one: the variant chosen at start-up).
    assert_eq!(
        meta["cpu"],
        endorm::engine::cpu_kernels().unwrap(),
        "{meta}"
    );
    // No GPU layers asked for: every layer and the KV cache on the CPU (device:: covers a GPU).
    assert_eq!(
        (&meta["device"], &meta["gpu_layers"], &meta["kv_cache"]),
        (&json!("CPU"), &json!(0), &json!("CPU")),
        "{meta}"
    );
    assert_eq!(
        meta["n_layers"], 31,
        "SmolLM2-135M's 30 blocks and its output layer"
    );
    // Measured on the neutral text once the model is ready, before its first job: a typical
    // token of an instruct model's reply loses reward (the sum favours short replies).
    assert!(endo_lc_baseline(d) < 0.0, "{meta}");
}

#[test]
fn score_equals_the_offline_scorer() {
    let d = daemon();
    for body in [
        json!({"prompt": "What is the capital of France?", "candidates": ["Paris.", "London.", "It is Paris, of course."],
               "return_tokens": true}),
        json!({"format": "raw", "prompt": "def add(a, b):\n", "candidates": ["    return a + b\n", "    return a - b\n"],
               "aggregate": "logprob_mean", "alpha": 0.5, "terminal": true, "return_tokens": true}),
        json!({"messages": [{"role": "user", "content": "Say hi."}], "principle": "Be brief.",
               "candidates": ["Hi!", "Hello there, how are you doing on this fine day?"]}),
        json!({"prompt": "Name a colour.", "candidates": ["Blue.", "My favourite colour is blue, like the sea."],
               "aggregate": "endo_lc"}),
    ] {
        let served = d.ok("/v1/score", &body);
        let request: ScoreRequest = serde_json::from_value(body.clone()).unwrap();
        let expected = offline(&request);
        assert_eq!(served["model"], ID);
        assert_eq!(served["aggregate"], json!(request.aggregate));
        assert_eq!(served["order"], json!(expected.order), "{body}");
        assert_eq!(served["usage"]["total_tokens"], expected.usage.total_tokens);
        for (got, want) in served["results"]
            .as_array()
            .unwrap()
            .iter()
            .zip(&expected.results)
        {
            assert_eq!(got["index"], want.index);
            assert_eq!(got["rank"], want.rank);
            assert_eq!(got["n_tokens"], want.n_tokens);
            for (name, value) in [
                ("score", want.score),
                ("endo", want.endo),
                ("endo_mean", want.endo_mean),
                ("logprob", want.logprob),
                ("logprob_mean", want.logprob_mean),
            ] {
                assert_close(f(&got[name]), value, name);
            }
            // The daemon measured its baseline at load, the offline scorer on its first request:
            // the same text in the same layout, so the same `endo_lc`, whatever the aggregate.
            let served_lc = got["endo_lc"].as_f64().expect("endo_lc");
            assert_close(served_lc, want.endo_lc.expect("endo_lc offline"), "endo_lc");
            let tokens = got["tokens"].as_array().map_or(&[][..], Vec::as_slice);
            assert_eq!(tokens.len(), want.tokens.as_ref().map_or(0, Vec::len));
            for (t, w) in tokens.iter().zip(want.tokens.iter().flatten()) {
                assert_eq!(t["id"], w.id);
                assert_eq!(t["text"], w.text.as_str());
                assert_close(f(&t["reward"]), w.reward, "reward");
                assert_close(f(&t["q"]), w.q, "q");
                assert_close(f(&t["v_next"]), w.v_next, "v_next");
            }
        }
        let timings = &served["timings"];
        for field in ["queue_ms", "prompt_ms", "candidates_ms", "total_ms"] {
            assert!(f(&timings[field]) >= 0.0, "{field}");
        }
    }
}

/// The served model's `endo_lc_baseline` (`/v1/models`), once the worker has measured it.
fn endo_lc_baseline(d: &Daemon) -> f64 {
    let get =
        |d: &Daemon| d.get("/v1/models").json()["data"][0]["meta"]["endo_lc_baseline"].as_f64();
    d.wait_for("the endo_lc baseline", |d| get(d).is_some());
    get(d).unwrap_or(f64::NAN)
}

#[test]
fn endo_lc_is_the_sum_less_the_models_baseline_per_token() {
    let d = daemon();
    let b = endo_lc_baseline(d);
    let body = json!({"prompt": "What is the capital of France?",
        "candidates": ["Paris.", "The capital of France is Paris, a city on the Seine.", "London."],
        "aggregate": "endo_lc"});
    let served = d.ok("/v1/score", &body);
    assert_eq!(served["aggregate"], "endo_lc");
    let (endo, lc, score) = (
        each(&served, "endo"),
        each(&served, "endo_lc"),
        each(&served, "score"),
    );
    let n = each(&served, "n_tokens");
    for i in 0..3 {
        assert_close(lc[i], endo[i] - b * n[i], "endo_lc = endo − b·H");
        assert_eq!(score[i], lc[i], "the score is the aggregate asked for");
    }
    let mut order: Vec<usize> = (0..3).collect();
    order.sort_by(|&x, &y| lc[y].total_cmp(&lc[x]));
    assert_eq!(served["order"], json!(order));
    // With the neutral contrast the baseline cancels: the same tokens, the same `b · H`.
    let contrasted = d.ok(
        "/v1/score",
        &json!({"prompt": "What is the capital of France?", "candidates": ["Paris."],
                "aggregate": "endo_lc", "contrast": "neutral"}),
    );
    let plain = d.ok(
        "/v1/score",
        &json!({"prompt": "What is the capital of France?", "candidates": ["Paris."],
                "contrast": "neutral"}),
    );
    assert_close(
        each(&contrasted, "score")[0],
        each(&plain, "score")[0],
        "endo_lc − neutral = endo − neutral",
    );
}

/// `field` of each result.
fn each(response: &Value, field: &str) -> Vec<f64> {
    let results = response["results"].as_array().expect("results");
    results.iter().map(|r| f(&r[field])).collect()
}

#[test]
fn contrast_neutral_subtracts_the_same_tokens_after_the_neutral_context() {
    let d = daemon();
    let candidates = json!(["Paris.", "The capital of France is Paris.", "London."]);
    for (question, neutral_request, aggregate) in [
        // Chat: the neutral context is the template over one empty user turn, which is what a
        // request with an empty prompt renders (the test config names no principle).
        (
            json!({"prompt": "What is the capital of France?"}),
            json!({"prompt": ""}),
            "endo",
        ),
        // Raw: the empty prompt, which SmolLM2 (no BOS added) now scores after its BOS token.
        (
            json!({"format": "raw", "prompt": "Q: What is the capital of France?\nA:"}),
            json!({"format": "raw", "prompt": ""}),
            "logprob_mean",
        ),
    ] {
        let with = |mut body: Value, extra: Value| {
            body["candidates"] = candidates.clone();
            body["aggregate"] = json!(aggregate);
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            body
        };
        let plain = d.ok("/v1/score", &with(question.clone(), json!({})));
        let contrasted = d.ok(
            "/v1/score",
            &with(question.clone(), json!({"contrast": "neutral"})),
        );
        let neutral = d.ok("/v1/score", &with(neutral_request, json!({})));
        let expected_neutral = each(&neutral, aggregate);
        let scores = each(&contrasted, "score");
        for (i, got) in each(&contrasted, "neutral").into_iter().enumerate() {
            assert_close(got, expected_neutral[i], "neutral");
            // The plain fields stay plain; score is their difference.
            assert_close(
                each(&contrasted, aggregate)[i],
                each(&plain, aggregate)[i],
                aggregate,
            );
            assert_close(scores[i], each(&plain, aggregate)[i] - got, "score");
        }
        assert!(plain["results"][0].get("neutral").is_none());
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        assert_eq!(contrasted["order"], json!(order));
        // The offline scorer (the same request type) agrees.
        let request: ScoreRequest =
            serde_json::from_value(with(question, json!({"contrast": "neutral"}))).unwrap();
        let offline = offline(&request);
        for (got, want) in scores.iter().zip(&offline.results) {
            assert_close(*got, want.score, "offline score");
        }
    }
    d.post(
        "/v1/score",
        &json!({"prompt": "Q", "candidates": ["a"], "contrast": "generic"}),
    )
    .expect_error(400, "invalid_request");
}

#[test]
fn reviewer_adds_the_instructions_logprob_after_each_candidate() {
    let d = daemon();
    let candidates = ["Paris.", "London is the capital of England."];
    let question = "What is the capital of France?";
    // Chat: the reversed layout is a user turn holding the candidate and the instruction as
    // the assistant's reply, i.e. a chat request with the candidate as the prompt.
    let chat = d.ok(
        "/v1/score",
        &json!({"prompt": question, "candidates": candidates, "reviewer": true}),
    );
    let raw_prompt = "def add(a, b):\n";
    let raw_candidates = ["    return a + b\n", "    return a - b\n"];
    let raw = d.ok(
        "/v1/score",
        &json!({"format": "raw", "prompt": raw_prompt, "candidates": raw_candidates,
                "reviewer": true, "aggregate": "endo_mean", "contrast": "neutral"}),
    );
    for (response, reversed, aggregate) in [
        (
            &chat,
            candidates
                .iter()
                .map(|c| json!({"prompt": c, "candidates": [question], "aggregate": "logprob"}))
                .collect::<Vec<_>>(),
            "endo",
        ),
        (
            &raw,
            raw_candidates
                .iter()
                .map(|c| {
                    json!({"format": "raw", "prompt": c, "candidates": [raw_prompt],
                           "aggregate": "logprob_mean"})
                })
                .collect(),
            "endo_mean",
        ),
    ] {
        let reviewer = each(response, "reviewer");
        let neutral = response["results"][0]
            .get("neutral")
            .map(|_| each(response, "neutral"));
        for (i, body) in reversed.iter().enumerate() {
            let expected = f(&d.ok("/v1/score", body)["results"][0]["score"]);
            assert_close(reviewer[i], expected, "reviewer");
            let contrast = neutral.as_ref().map_or(0.0, |n| n[i]);
            assert_close(
                each(response, "score")[i],
                each(response, aggregate)[i] + reviewer[i] - contrast,
                "score",
            );
        }
    }
}

/// The probability that each of `rewards` is the best: a softmax.
fn softmax(rewards: &[f64]) -> Vec<f64> {
    let best = rewards.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = rewards.iter().map(|r| (r - best).exp()).collect();
    let total: f64 = weights.iter().sum();
    weights.iter().map(|w| w / total).collect()
}

#[test]
fn rerank_dialects_share_one_scoring_best_first() {
    let d = daemon();
    let query = "What is the capital of France?";
    let documents = ["London.", "Paris.", "Berlin is nice."];
    let scored = d.ok(
        "/v1/score",
        &json!({"prompt": query, "candidates": documents}),
    );
    let endo: Vec<f64> = (0..3).map(|i| f(&scored["results"][i]["endo"])).collect();
    let probability = softmax(&endo);
    let order = scored["order"].as_array().unwrap().clone();

    // Cohere v1/v2 (an unknown model name is served by the default model and echoed), Jina, vLLM.
    let body = json!({"model": "rerank-english-v3.0", "query": query,
                      "documents": [documents[0], {"text": documents[1]}, documents[2]],
                      "top_n": 2, "return_documents": true, "max_tokens_per_doc": null});
    for (route, version) in [("/v1/rerank", "1"), ("/v2/rerank", "2"), ("/rerank", "1")] {
        let reranked = d.ok(route, &body);
        assert_eq!(reranked["model"], "rerank-english-v3.0", "{route}");
        assert!(reranked["id"].as_str().is_some_and(|id| !id.is_empty()));
        assert_eq!(reranked["meta"]["api_version"]["version"], version);
        assert_eq!(reranked["data"], reranked["results"], "{route}");
        let results = reranked["results"].as_array().unwrap();
        assert_eq!(results.len(), 2);
        for (result, index) in results.iter().zip(&order) {
            assert_eq!(&result["index"], index);
            let i = index.as_u64().unwrap() as usize;
            assert_close(f(&result["relevance_score"]), probability[i], "relevance");
            assert_close(f(&result["reward"]), endo[i], "reward");
            assert_eq!(result["document"]["text"], documents[i]);
        }
        assert_eq!(
            reranked["usage"]["total_tokens"],
            scored["usage"]["total_tokens"]
        );
    }

    // text-embeddings-inference: a bare list, probabilities or raw rewards.
    let tei = d.ok(
        "/rerank",
        &json!({"query": query, "texts": documents, "return_text": true, "truncate": null}),
    );
    let tei = tei.as_array().unwrap();
    assert_eq!(tei.len(), 3);
    for (rank, index) in tei.iter().zip(&order) {
        let i = index.as_u64().unwrap() as usize;
        assert_eq!(&rank["index"], index);
        assert_close(f(&rank["score"]), probability[i], "score");
        assert_eq!(rank["text"], documents[i]);
    }
    let raw = d.ok(
        "/rerank",
        &json!({"query": query, "texts": documents, "raw_scores": true}),
    );
    assert_close(
        f(&raw[0]["score"]),
        endo[order[0].as_u64().unwrap() as usize],
        "raw",
    );
    assert!(raw[0].get("text").is_none());

    let info = d.get("/info").json();
    assert_eq!(info["model_id"], ID);
    assert_eq!(info["max_client_batch_size"], 8);
    assert_eq!(info["max_input_length"], 2048);
}

#[test]
fn max_tokens_per_doc_scores_the_first_tokens_only() {
    let d = daemon();
    let long = "Paris is the capital of France and its largest city.";
    let cut = d.ok(
        "/v2/rerank",
        &json!({"query": "Capital of France?", "documents": [long], "max_tokens_per_doc": 2}),
    );
    let scored = d.ok(
        "/v1/score",
        &json!({"prompt": "Capital of France?", "candidates": [long], "max_candidate_tokens": 2}),
    );
    // Two tokens of the reply plus the end-of-turn token.
    assert_eq!(scored["results"][0]["n_tokens"], 3);
    assert_close(
        f(&cut["results"][0]["reward"]),
        f(&scored["results"][0]["endo"]),
        "reward",
    );
}

#[test]
fn consensus_adds_the_candidates_agreement_to_the_aggregate() {
    let d = daemon();
    // Two copies of one answer, a near copy and an outlier: agreement favours the copies.
    let candidates = [
        "The capital of France is Paris.",
        "Paris.",
        "The capital of France is Paris.",
        "The capital of France is Paris!",
        "I like turtles.",
    ];
    let plain = d.ok(
        "/v1/score",
        &json!({"prompt": "Capital of France?", "candidates": candidates, "aggregate": "endo_mean"}),
    );
    let body = json!({"prompt": "Capital of France?", "candidates": candidates,
                      "aggregate": "endo_mean", "consensus": 2.5});
    let combined = d.ok("/v1/score", &body);
    let results = combined["results"].as_array().expect("results");
    let agreement = consensus::agreement(&candidates);
    let endo_mean: Vec<f64> = results.iter().map(|r| f(&r["endo_mean"])).collect();
    let expected = consensus::combine(&endo_mean, &agreement, 2.5);
    for (i, result) in results.iter().enumerate() {
        // The aggregates are those of the plain request; agreement and score are added on top.
        for field in ["endo", "endo_mean", "logprob", "logprob_mean"] {
            assert_close(f(&result[field]), f(&plain["results"][i][field]), field);
        }
        assert!(plain["results"][i].get("agreement").is_none());
        assert_eq!(f(&result["agreement"]), agreement[i], "agreement {i}");
        assert_close(f(&result["score"]), expected[i], "combined score");
    }
    assert!(agreement[0] > agreement[4], "{agreement:?}");
    // `order` and `rank` follow the combined score.
    let order: Vec<usize> = serde_json::from_value(combined["order"].clone()).expect("order");
    let scores: Vec<f64> = order.iter().map(|&i| f(&results[i]["score"])).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    for (rank, &i) in order.iter().enumerate() {
        assert_eq!(results[i]["rank"], rank + 1);
    }
    // The offline scorer reads the same field.
    let request: ScoreRequest = serde_json::from_value(body).expect("request");
    let offline = offline(&request);
    for (served, offline) in results.iter().zip(&offline.results) {
        assert_close(f(&served["score"]), offline.score, "offline score");
        assert_eq!(Some(f(&served["agreement"])), offline.agreement);
    }

    let bad = |weight: Value| {
        d.post(
            "/v1/score",
            &json!({"prompt": "Q?", "candidates": ["a", "b"], "consensus": weight}),
        )
        .expect_error(400, "invalid_request")
    };
    for weight in [json!(0), json!(-1), json!(100.5)] {
        let message = bad(weight.clone());
        assert!(message.contains("`consensus`"), "{weight}: {message}");
    }
    // Not a number: serde's message, still a 400.
    bad(json!("high"));
}

#[test]
fn get_reward_with_plain_text_prompts_is_raw_endo() {
    let d = daemon();
    let prompt = "The capital of France is";
    let responses = [" Paris.", " London.", " a city."];
    let query: Vec<String> = responses.iter().map(|r| format!("{prompt}{r}")).collect();
    let mut prompts = vec![prompt.to_owned(); 3];
    prompts[2] = "The capital of France".to_owned();
    let rewards = d.ok(
        "/get_reward",
        &json!({"query": query, "prompts": prompts, "labels": ["", "", ""]}),
    );
    let rewards = rewards["rewards"].as_array().unwrap();
    assert_eq!(rewards.len(), 3);
    let raw = |prompt: &str, candidate: &str| ScoreRequest {
        format: Some(Format::Raw),
        prompt: Some(prompt.into()),
        candidates: vec![candidate.into()],
        ..ScoreRequest::default()
    };
    for (i, (prompt, query)) in prompts.iter().zip(&query).enumerate() {
        let expected = offline(&raw(prompt, &query[prompt.len()..])).results[0].endo;
        assert_close(f(&rewards[i]), expected, "reward");
    }
}

#[test]
fn get_reward_without_prompts_scores_from_the_first_token() {
    let d = daemon();
    let text = "The capital of France is Paris.";
    let rewards = d.ok("/get_reward", &json!({"query": [text]}));
    let groups = prepare::rewards(common::model(), &[text.to_owned()], None).unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(
        groups[0].0.context.len(),
        1,
        "the first token is the context"
    );
    let mut scorer = common::scorer(common::options());
    let scored = scorer.score(&groups[0].0, Alpha::ONE).unwrap();
    let expected = Aggregates::of(&scored.candidates[0], Alpha::ONE, None).endo;
    assert_close(f(&rewards["rewards"][0]), expected, "reward");
    assert_eq!(rewards["scores"], rewards["rewards"]);
}

#[test]
fn get_reward_of_a_templated_conversation_is_chat_endo() {
    // What OpenRLHF sends: the prompt as the policy saw it (the chat template with its generation
    // prompt, special tokens as text) and the response as it wrote it, ending its turn, then
    // padding that must not be scored.
    let d = daemon();
    let question = "What is the capital of France?";
    let replies = ["Paris.", "I think it is London."];
    let chat = ScoreRequest {
        prompt: Some(question.into()),
        candidates: replies.iter().map(|r| r.to_string()).collect(),
        ..ScoreRequest::default()
    };
    let model = common::model();
    let context = prepare::score_request(model, &chat, None).unwrap().context;
    let prompt = model.detokenize(&context);
    assert!(prompt.contains("<|im_start|>assistant"), "{prompt}");
    let query: Vec<String> = replies
        .iter()
        .map(|r| format!("{prompt}{r}<|im_end|>\n<|endoftext|><|endoftext|>"))
        .collect();
    let mut with_empty = query.clone();
    with_empty.push(prompt.clone());
    let rewards = d.ok(
        "/get_reward",
        &json!({"query": with_empty, "prompts": vec![prompt; 3], "labels": ["", "", ""]}),
    );
    let expected = offline(&chat);
    for (i, result) in expected.results.iter().enumerate() {
        assert_close(f(&rewards["rewards"][i]), result.endo, "chat endo");
    }
    assert_eq!(
        rewards["rewards"][2], 0.0,
        "an empty response is the empty sum"
    );

    // One query that does not start with its prompt fails the request, naming it.
    let message = d
        .post(
            "/get_reward",
            &json!({"query": [query[0].clone(), "nothing"], "prompts": [question, question]}),
        )
        .expect_error(400, "invalid_request");
    assert!(
        message.contains("query[0]") || message.contains("query[1]"),
        "{message}"
    );
}

#[test]
fn completions_echo_logprobs_agree_with_score() {
    let d = daemon();
    let context = "The capital of France is";
    let body = json!({"model": ID, "prompt": format!("{context} Paris"), "echo": true, "max_tokens": 1,
                      "logprobs": 3, "temperature": 0, "seed": 1234});
    let completion = d.ok("/v1/completions", &body);
    assert_eq!(completion["object"], "text_completion");
    let choice = &completion["choices"][0];
    assert_eq!(choice["index"], 0);
    let logprobs = &choice["logprobs"];
    let tokens = logprobs["tokens"].as_array().unwrap();
    let token_logprobs = logprobs["token_logprobs"].as_array().unwrap();
    let top = logprobs["top_logprobs"].as_array().unwrap();
    let offsets = logprobs["text_offset"].as_array().unwrap();
    let n_prompt = completion["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    // The prompt's tokens, then the greedy token.
    assert_eq!(tokens.len(), n_prompt + 1);
    assert_eq!(token_logprobs.len(), tokens.len());
    assert_eq!(top.len(), tokens.len());
    assert_eq!(offsets.len(), tokens.len());
    assert!(token_logprobs[0].is_null() && top[0].is_null());
    assert_eq!(completion["usage"]["completion_tokens"], 1);
    let text: String = tokens.iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(choice["text"], text.as_str());
    assert!(text.starts_with("The capital of France is Paris"));
    // Each top_logprobs entry holds k alternatives, the best at least as likely as the token.
    for (lp, alternatives) in token_logprobs.iter().zip(top).skip(1) {
        let alternatives = alternatives.as_object().unwrap();
        assert!(!alternatives.is_empty() && alternatives.len() <= 3);
        let best = alternatives
            .values()
            .map(f)
            .fold(f64::NEG_INFINITY, f64::max);
        assert!(best >= f(lp) - 1e-9);
    }
    // The greedy token is the best of the last row.
    let last = top.last().unwrap().as_object().unwrap();
    assert_close(
        f(token_logprobs.last().unwrap()),
        last.values().map(f).fold(f64::NEG_INFINITY, f64::max),
        "greedy",
    );
    // " Paris" after the context: the same log-prob as /v1/score's raw per-token logprob.
    let scored = d.ok(
        "/v1/score",
        &json!({"format": "raw", "prompt": context, "candidates": [" Paris"], "return_tokens": true}),
    );
    let paris = &scored["results"][0]["tokens"];
    assert_eq!(paris.as_array().unwrap().len(), 1, "{paris}");
    assert_close(
        f(&token_logprobs[n_prompt - 1]),
        f(&paris[0]["logprob"]),
        "logprob of Paris",
    );
}

#[test]
fn completions_take_every_prompt_shape() {
    let d = daemon();
    let ids = d.ok("/tokenize", &json!({"content": "Hello world, hello"}))["tokens"].clone();
    for prompt in [
        json!(["Hello world", "Goodbye"]),
        json!([ids.clone(), ids.clone()]),
    ] {
        let completion = d.ok(
            "/v1/completions",
            &json!({"prompt": prompt, "echo": true, "max_tokens": 0, "logprobs": 0}),
        );
        let choices = completion["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 2);
        for (i, choice) in choices.iter().enumerate() {
            assert_eq!(choice["index"], i);
            assert!(choice["logprobs"]["token_logprobs"][1].is_f64());
        }
    }
    let single = d.ok(
        "/v1/completions",
        &json!({"prompt": ids, "echo": true, "max_tokens": 0}),
    );
    assert_eq!(single["choices"][0]["text"], "Hello world, hello");
    assert!(single["choices"][0]["logprobs"].is_null());
}

#[test]
fn tokenize_and_detokenize_speak_both_dialects() {
    let d = daemon();
    let llama = d.ok("/tokenize", &json!({"content": "Hello world"}));
    let vllm = d.ok(
        "/tokenize",
        &json!({"model": ID, "prompt": "Hello world", "add_special_tokens": false}),
    );
    assert_eq!(llama["tokens"], vllm["tokens"]);
    assert_eq!(llama["count"], 2);
    let pieces = d.ok(
        "/tokenize",
        &json!({"content": "Hello world", "with_pieces": true}),
    );
    assert_eq!(pieces["tokens"][1]["id"], llama["tokens"][1]);
    assert_eq!(pieces["tokens"][1]["piece"], " world");
    let special = d.ok("/tokenize", &json!({"content": "<|im_end|>"}));
    assert_eq!(special["count"], 1, "special tokens are parsed by default");
    let literal = d.ok(
        "/tokenize",
        &json!({"content": "<|im_end|>", "parse_special": false}),
    );
    assert!(literal["count"].as_u64().unwrap() > 1);

    let text = d.ok("/detokenize", &json!({"tokens": llama["tokens"]}));
    assert_eq!(
        text,
        json!({"content": "Hello world", "prompt": "Hello world"})
    );

    let info = d.get("/tokenizer_info").json();
    assert_eq!(info["model"], ID);
    assert_eq!(info["eos_token"], "<|im_end|>");
    assert!(info["chat_template"]
        .as_str()
        .is_some_and(|t| t.contains("im_start")));
    for field in ["bos_token", "pad_token"] {
        assert!(info.get(field).is_some(), "{field}");
    }
}

#[test]
fn detokenize_of_a_split_character_is_replacement_not_a_crash() {
    let d = daemon();
    let tokens = d.ok("/tokenize", &json!({"content": "日本"}))["tokens"].clone();
    let ids = tokens.as_array().unwrap();
    assert!(ids.len() >= 2, "{tokens}");
    let half = d.ok("/detokenize", &json!({"tokens": [ids[0]]}));
    assert!(
        half["content"].as_str().unwrap().contains('\u{FFFD}'),
        "{half}"
    );
}

#[test]
fn metrics_count_requests_tokens_and_queue() {
    let d = daemon();
    d.ok(
        "/v1/score",
        &json!({"prompt": "Hi", "candidates": ["Hello"]}),
    );
    let metrics = d.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    let text = metrics.text();
    for needle in [
        "endorm_requests_total{route=\"/v1/score\",status=\"200\"}",
        "endorm_request_duration_seconds_bucket{route=\"/v1/score\",le=\"+Inf\"}",
        "endorm_tokens_total ",
        "endorm_cached_tokens_total ",
        &format!("endorm_queue_waiting{{model=\"{ID}\"}}"),
        &format!("endorm_model_state{{model=\"{ID}\",state=\"ready\"}} 1"),
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    let tokens: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("endorm_tokens_total "))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(tokens > 0);
}

#[test]
fn bad_requests_get_the_statuses_of_the_api() {
    let d = daemon();
    let score = |body: &[u8]| d.post_raw("/v1/score", body);
    score(b"{\"prompt\": \"hi\", \"candidates\": [").expect_error(400, "invalid_json");
    score(b"").expect_error(400, "invalid_json");
    score(b"{\"prompt\": \"hi\", \"candidates\": \"Paris\"}").expect_error(400, "invalid_request");
    score(b"{\"prompt\": 3, \"candidates\": [\"a\"]}").expect_error(400, "invalid_request");
    let unknown = score(b"{\"prompt\": \"hi\", \"candidates\": [\"a\"], \"temprature\": 1}")
        .expect_error(400, "invalid_request");
    assert!(unknown.contains("temprature"), "{unknown}");
    score(b"{\"prompt\": \"hi\", \"candidates\": []}").expect_error(400, "invalid_request");
    score(br#"{"format": "raw", "prompt": "hi", "candidates": [""]}"#)
        .expect_error(400, "invalid_request");
    score(br#"{"prompt": "hi", "candidates": ["a"], "alpha": -1}"#)
        .expect_error(400, "invalid_request");
    score(br#"{"format": "raw", "prompt": "hi", "principle": "x", "candidates": ["a"]}"#)
        .expect_error(400, "invalid_request");
    score(b"\xff\xfe{}").expect_error(400, "invalid_json");

    let many = d.post(
        "/v1/score",
        &json!({"prompt": "hi", "candidates": vec!["a"; 9]}),
    );
    let message = many.expect_error(400, "too_many_candidates");
    assert!(message.contains("max_candidates = 8"), "{message}");

    let large = d.post(
        "/v1/score",
        &json!({"prompt": "x".repeat(70_000), "candidates": ["a"]}),
    );
    let message = large.expect_error(413, "body_too_large");
    assert!(message.contains("65536"), "{message}");

    let overflow = d.post(
        "/v1/score",
        &json!({"format": "raw", "prompt": long_text(1200), "candidates": ["a"]}),
    );
    let message = overflow.expect_error(422, "context_length_exceeded");
    assert!(message.contains("2048"), "{message}");
    let too_many_tokens = d.post(
        "/v1/score",
        &json!({"format": "raw", "prompt": long_text(2500), "candidates": ["a"]}),
    );
    let message = too_many_tokens.expect_error(422, "too_many_tokens");
    assert!(message.contains("max_tokens = 4000"), "{message}");

    let unknown_model = d.post(
        "/v1/score",
        &json!({"model": "gpt-9", "prompt": "hi", "candidates": ["a"]}),
    );
    let message = unknown_model.expect_error(404, "model_not_found");
    assert!(message.contains(ID), "{message}");
    d.get("/v2/nothing").expect_error(404, "unknown_route");
    d.get("/v1/score").expect_error(405, "method_not_allowed");
    d.post("/v1/rerank", &json!({"query": "q", "documents": []}))
        .expect_error(400, "invalid_request");
    d.post("/get_reward", &json!({"query": ["ab"], "prompts": ["xyz"]}))
        .expect_error(400, "invalid_request");
    d.post(
        "/get_reward",
        &json!({"query": ["a", "b"], "prompts": ["a"]}),
    )
    .expect_error(400, "invalid_request");
}

#[test]
fn token_ids_outside_the_vocabulary_are_refused() {
    let d = daemon();
    for tokens in [
        json!([-1]),
        json!([49152]),
        json!([1, 99_999_999_999i64]),
        json!([3.5]),
        json!(["a"]),
    ] {
        let response = d.post("/detokenize", &json!({"tokens": tokens}));
        assert_eq!(response.status, 400, "{tokens}: {}", response.text());
    }
    d.post("/detokenize", &json!({"tokens": [-1]}))
        .expect_error(400, "invalid_token");
    d.post(
        "/v1/completions",
        &json!({"prompt": [1, 2, 70000], "echo": true, "max_tokens": 0, "logprobs": 1}),
    )
    .expect_error(400, "invalid_token");
    // The daemon is still there.
    assert_eq!(d.get("/health").status, 200);
}

#[test]
fn completions_outside_the_scoring_subset_say_what_is_supported() {
    let d = daemon();
    for body in [
        json!({"prompt": "Hi", "max_tokens": 16}),
        json!({"prompt": "Hi", "echo": true, "max_tokens": 5}),
        json!({"prompt": "Hi", "echo": true, "max_tokens": 1, "temperature": 0.8}),
        json!({"prompt": "Hi", "echo": true, "max_tokens": 0, "stream": true}),
        json!({"prompt": "Hi", "echo": true, "max_tokens": 0, "logprobs": 21}),
    ] {
        let message = d
            .post("/v1/completions", &body)
            .expect_error(400, "unsupported");
        assert!(message.contains("max_tokens"), "{message}");
    }
    d.post(
        "/v1/completions",
        &json!({"prompt": {"a": 1}, "echo": true}),
    )
    .expect_error(400, "invalid_request");
}

#[test]
fn thirty_two_concurrent_clients_get_the_sequential_results() {
    let d = daemon();
    let body = |i: usize| {
        json!({"prompt": format!("Question {i}: what is {i} plus {i}?"),
               "candidates": [format!("{}", 2 * i), format!("{}", 2 * i + 1), "I do not know."]})
    };
    let sequential: Vec<Value> = (0..32).map(|i| d.ok("/v1/score", &body(i))).collect();
    let concurrent: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..32)
            .map(|i| scope.spawn(move || d.ok("/v1/score", &body(i))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    for (i, (a, b)) in sequential.iter().zip(&concurrent).enumerate() {
        assert_eq!(a["order"], b["order"], "request {i}");
        for (x, y) in a["results"]
            .as_array()
            .unwrap()
            .iter()
            .zip(b["results"].as_array().unwrap())
        {
            assert_close(f(&x["endo"]), f(&y["endo"]), &format!("request {i}"));
            assert_close(f(&x["logprob"]), f(&y["logprob"]), &format!("request {i}"));
        }
    }
}

#[test]
fn a_second_daemon_on_the_same_socket_refuses() {
    let d = daemon();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_endorm"))
        .args(["serve", "--socket"])
        .arg(&d.socket)
        .args(["--model", common::model_path().to_str().unwrap()])
        .output()
        .expect("run endorm serve");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("already serving"), "{stderr}");
    assert_eq!(
        d.get("/health").status,
        200,
        "the first daemon keeps serving"
    );
}

#[test]
fn the_curl_examples_of_the_docs_run() {
    // Every route a client can call; each must have an example that runs.
    const ROUTES: [&str; 10] = [
        "/health",
        "/v1/models",
        "/v1/score",
        "/v1/rerank",
        "/v1/completions",
        "/get_reward",
        "/tokenize",
        "/detokenize",
        "/tokenizer_info",
        "/metrics",
    ];
    let d = daemon();
    // docs/SERVER.md has one for every route; the README's (if any) must run as well.
    let root = env!("CARGO_MANIFEST_DIR");
    let doc = std::fs::read_to_string(format!("{root}/docs/SERVER.md")).expect("docs/SERVER.md")
        + &std::fs::read_to_string(format!("{root}/README.md")).unwrap_or_default();
    let blocks: Vec<&str> = doc
        .split("```sh\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .collect();
    let examples: Vec<String> = blocks
        .iter()
        .filter(|block| block.contains("curl") && block.contains("--unix-socket"))
        .map(|block| block.to_string())
        .collect();
    // How the docs set SOCK, run as written with `endorm` on PATH: it must find the daemon's socket
    // (here named by ENDORM_SOCKET; first_hour::config_path_... covers the other ways).
    let set_sock: Vec<&str> = blocks
        .iter()
        .flat_map(|block| block.lines())
        .filter(|line| line.starts_with("SOCK="))
        .collect();
    assert!(
        set_sock.len() >= 2 && set_sock.iter().all(|l| *l == set_sock[0]),
        "{set_sock:?}"
    );
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_endorm"))
        .parent()
        .unwrap()
        .to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    assert!(
        examples.len() >= 10,
        "found {} curl examples",
        examples.len()
    );
    let mut routes_seen = Vec::new();
    for example in &examples {
        let script = format!("{}\n{example}", set_sock[0]);
        let output = std::process::Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .env("PATH", &path)
            .env("ENDORM_SOCKET", &d.socket)
            .env_remove("SOCK")
            .output()
            .expect("bash");
        let stdout = String::from_utf8_lossy(&output.stdout);
        if example.contains("curl exits 22") {
            // The error example: curl fails, and still prints the daemon's error body, as shown.
            assert_eq!(output.status.code(), Some(22), "{example}\n{stdout}");
            let body: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
            let shown = example
                .lines()
                .find_map(|l| l.strip_prefix("# {"))
                .map(|l| format!("{{{l}"))
                .expect("the example shows its answer");
            assert_eq!(
                body,
                serde_json::from_str::<serde_json::Value>(&shown).unwrap()
            );
            continue;
        }
        assert!(
            output.status.success(),
            "example failed:\n{example}\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !stdout.contains("\"error\""),
            "example answered an error:\n{example}\n{stdout}"
        );
        for route in ROUTES {
            if example.contains(&format!("localhost{route}")) {
                routes_seen.push(route);
            }
        }
    }
    for route in ROUTES {
        assert!(routes_seen.contains(&route), "no curl example for {route}");
    }
}
