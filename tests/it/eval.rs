//! `endorm eval` end to end on the real default model and tiny synthetic files where the answer is
//! obvious: a fluent answer against the same words shuffled.

use crate::common;

use std::path::PathBuf;

use endorm::api::{Contrast, Format, ScoreRequest};
use endorm::eval::methods::Method;
use endorm::eval::{self, EvalConfig, Report};
use endorm::reward::Aggregate;

fn data(name: &str) -> PathBuf {
    common::data_dir().join("eval").join(name)
}

fn config(file: &str, methods: &[Method]) -> EvalConfig {
    EvalConfig {
        data: data(file),
        methods: methods.to_vec(),
        principle: None,
        limit: None,
        cache: None,
        model_id: "test".into(),
        progress: false,
        plot: None,
    }
}

fn method<'r>(report: &'r Report, name: &str) -> &'r eval::MethodReport {
    report
        .methods
        .iter()
        .find(|m| m.method == name)
        .expect("method in report")
}

#[test]
fn endo_prefers_fluent_answers_to_shuffled_words() {
    let mut scorer = common::scorer(common::options());
    let report = eval::run(
        &mut scorer,
        None,
        &config(
            "obvious-prefs.jsonl",
            &[Method::Endo, Method::Length, Method::Shorter],
        ),
    )
    .unwrap();
    assert_eq!((report.kind.as_str(), report.items), ("preference", 10));
    let endo = method(&report, "endo").accuracy.unwrap();
    assert!(endo.value >= 0.9, "endo accuracy {endo:?}");
    assert_eq!(endo.n, 10);
    assert!(endo.lo < endo.value && endo.value <= endo.hi);
    // Shuffling keeps the length: the length baselines can only tie.
    assert_eq!(method(&report, "length").accuracy.unwrap().value, 0.5);
    assert_eq!(method(&report, "-length").accuracy.unwrap().value, 0.5);
    assert!(report.table().contains("endo"));
}

#[test]
fn endo_ranks_working_code_first() {
    let mut scorer = common::scorer(common::options());
    let report = eval::run(
        &mut scorer,
        None,
        &config("obvious-code.jsonl", &[Method::Endo]),
    )
    .unwrap();
    assert_eq!((report.kind.as_str(), report.items), ("ranking", 3));
    let endo = method(&report, "endo");
    assert_eq!(endo.pass_at_1.unwrap().value, 1.0, "{endo:?}");
    assert!(endo.auc.unwrap().value >= 0.9, "{endo:?}");
    assert_eq!(report.random_pass_at_1.unwrap().value, 0.5);
}

#[test]
fn consensus_methods_come_from_the_cached_reward_pass_without_a_decode() {
    let dir = tempfile::tempdir().unwrap();
    let cache = eval::cache_path(&dir.path().join("report.json"));
    let mut scorer = common::scorer(common::options());
    let reward_only = EvalConfig {
        cache: Some(cache.clone()),
        ..config("obvious-code.jsonl", &[Method::Endo])
    };
    let first = eval::run(&mut scorer, None, &reward_only).unwrap();
    let cached = std::fs::read_to_string(&cache).unwrap();

    // A later run asks for the consensus methods: every model pass comes from that cache, and
    // the cache gains nothing (agreement is recomputed from the texts).
    let with_consensus = EvalConfig {
        methods: vec![Method::Consensus, Method::WithConsensus(Aggregate::Endo)],
        plot: Some(dir.path().join("figures")),
        ..reward_only
    };
    let second = eval::run(&mut scorer, None, &with_consensus).unwrap();
    // The figures come from the same cache; plot.rs's tests look inside them.
    let figures: Vec<String> = ["estimates.svg", "roc.svg"]
        .iter()
        .map(|f| dir.path().join("figures").join(f).display().to_string())
        .collect();
    assert_eq!(second.figures, figures);
    for figure in &figures {
        let svg = std::fs::read_to_string(figure).unwrap();
        assert!(svg.contains("endo+consensus"), "{figure}");
    }
    assert_eq!(
        second.resumed, 3,
        "the reward pass of all 3 tasks is cached"
    );
    assert_eq!(std::fs::read_to_string(&cache).unwrap(), cached);
    let combined = method(&second, "endo+consensus");
    assert_eq!((combined.scored, combined.failed), (3, 0), "{combined:?}");
    assert_eq!(combined.pass_tokens, method(&first, "endo").pass_tokens);
    // Each task's shuffled copies share their words, so agreement ties everywhere: consensus
    // alone picks at random (ties share the pick) and leaves endo's ranking as it was.
    let consensus = method(&second, "consensus");
    assert_eq!((consensus.scored, consensus.pass_tokens), (3, 0));
    assert_eq!(consensus.pass_at_1.unwrap().value, 0.5, "{consensus:?}");
    assert_eq!(combined.pass_at_1, method(&first, "endo").pass_at_1);
    assert_eq!(combined.auc, method(&first, "endo").auc);
}

#[test]
fn judges_score_every_item_and_a_rerun_resumes_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let mut scorer = common::scorer(common::options());
    let judges = [Method::JudgeVerifier, Method::JudgePairwise];
    let config = EvalConfig {
        limit: Some(1),
        cache: Some(eval::cache_path(&dir.path().join("report.json"))),
        ..config("obvious-prefs.jsonl", &judges)
    };
    let first = eval::run(&mut scorer, None, &config).unwrap();
    for judge in ["judge-verifier", "judge-pairwise"] {
        let m = method(&first, judge);
        assert_eq!((m.scored, m.failed), (1, 0), "{m:?}");
        assert!(m.accuracy.is_some() && m.pass_tokens > 0, "{m:?}");
    }
    assert_eq!(first.resumed, 0);
    let second = eval::run(&mut scorer, None, &config).unwrap();
    assert_eq!(
        second.resumed, 2,
        "one item × two judges come from the cache"
    );
    // The same scores and counts (the timings are sums of floats that the cache round-trips).
    let summary = |r: &eval::Report| -> Vec<_> {
        r.methods
            .iter()
            .map(|m| {
                (
                    m.method.clone(),
                    m.accuracy,
                    m.scored,
                    m.failed,
                    m.pass_tokens,
                )
            })
            .collect()
    };
    assert_eq!(summary(&first), summary(&second));

    // Code items go through the code prompts, with completions compared in a cycle.
    let code = eval::run(
        &mut scorer,
        None,
        &EvalConfig {
            limit: Some(1),
            ..self::config("obvious-code.jsonl", &judges)
        },
    )
    .unwrap();
    for judge in ["judge-verifier", "judge-pairwise"] {
        let m = method(&code, judge);
        assert_eq!((m.scored, m.failed), (1, 0), "{m:?}");
        assert!(m.pass_at_1.is_some() && m.auc.is_some(), "{m:?}");
    }
}

#[test]
fn a_cache_from_another_principle_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut scorer = common::scorer(common::options());
    let cache = Some(dir.path().join("items.jsonl"));
    let plain = EvalConfig {
        limit: Some(1),
        cache: cache.clone(),
        ..config("obvious-prefs.jsonl", &[Method::Endo])
    };
    eval::run(&mut scorer, None, &plain).unwrap();
    let steered = EvalConfig {
        principle: Some("Prefer short answers.".into()),
        ..plain
    };
    assert!(matches!(
        eval::run(&mut scorer, None, &steered),
        Err(eval::EvalError::CacheMismatch { .. })
    ));
}

#[test]
fn a_bad_file_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    std::fs::write(
        &path,
        "{\"id\": 1, \"prompt\": \"p\", \"chosen\": \"c\", \"rejected\": \"r\"}\n{\"id\": 2}\n",
    )
    .unwrap();
    let mut scorer = common::scorer(common::options());
    let error = eval::run(
        &mut scorer,
        None,
        &EvalConfig {
            data: path,
            ..config("x", &[Method::Length])
        },
    )
    .unwrap_err();
    assert!(error.to_string().contains("bad.jsonl:2:"), "{error}");
}

#[test]
fn docs_quote_the_judge_prompts_verbatim() {
    use endorm::eval::judges::{
        pairwise_code_prompt, pairwise_prompt, verifier_code_prompt, verifier_prompt,
    };
    let docs =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/QUALITY.md"))
            .unwrap();
    for prompt in [
        verifier_prompt("{request}", "{response}"),
        verifier_code_prompt("{prompt}", "{completion}"),
        pairwise_prompt("{request}", "{a}", "{b}"),
        pairwise_code_prompt("{prompt}", "{a}", "{b}"),
    ] {
        assert!(
            docs.contains(&format!("````text\n{prompt}\n````")),
            "not in docs/QUALITY.md:\n{prompt}"
        );
    }
}

/// The neutral and reviewer passes: every item scored, the reward pass they build on run first
/// into the same cache, and their scores those of `/v1/score` with `contrast` and `reviewer`.
#[test]
fn contrast_methods_are_score_with_contrast_and_reviewer() {
    let dir = tempfile::tempdir().unwrap();
    let mut scorer = common::scorer(common::options());
    let methods = [Method::EndoNeutral, Method::EndoMeanReviewer];
    for (file, format) in [
        ("obvious-prefs.jsonl", Format::Chat),
        ("obvious-code.jsonl", Format::Raw),
    ] {
        let cache = eval::cache_path(&dir.path().join(format!("{file}.json")));
        let config = EvalConfig {
            limit: Some(1),
            cache: Some(cache.clone()),
            ..config(file, &methods)
        };
        let report = eval::run(&mut scorer, None, &config).unwrap();
        for name in ["endo-neutral", "endo_mean+reviewer"] {
            let m = method(&report, name);
            assert_eq!((m.scored, m.failed), (1, 0), "{m:?}");
        }
        let records: Vec<serde_json::Value> = std::fs::read_to_string(&cache)
            .unwrap()
            .lines()
            .skip(1)
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let passes: Vec<&str> = records.iter().filter_map(|r| r["pass"].as_str()).collect();
        assert_eq!(passes, ["reward", "neutral", "reviewer"]);
        let item: serde_json::Value = serde_json::from_str(
            std::fs::read_to_string(data(file))
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        let candidates: Vec<String> = match format {
            Format::Chat => vec![item["chosen"].clone(), item["rejected"].clone()]
                .into_iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect(),
            Format::Raw => serde_json::from_value(item["completions"].clone()).unwrap(),
        };
        for (k, (name, aggregate, contrast, reviewer)) in [
            (
                "endo-neutral",
                Aggregate::Endo,
                Some(Contrast::Neutral),
                false,
            ),
            ("endo_mean+reviewer", Aggregate::EndoMean, None, true),
        ]
        .into_iter()
        .enumerate()
        {
            let request = ScoreRequest {
                format: Some(format),
                prompt: Some(item["prompt"].as_str().unwrap().to_owned()),
                candidates: candidates.clone(),
                aggregate,
                contrast,
                reviewer,
                ..ScoreRequest::default()
            };
            let expected = common::scorer(common::options())
                .score_request("test", &request, None)
                .unwrap();
            let got = &records[k + 1]["scored"]["scores"][name]["candidates"];
            for (i, want) in expected.results.iter().enumerate() {
                let got = got[i].as_f64().unwrap();
                assert!(
                    (got - want.score).abs() < 1e-4,
                    "{name} {i}: {got} vs {}",
                    want.score
                );
            }
        }
    }
}

/// `endorm eval --reference-model` through the binary: the default model against itself scores
/// the same tokens the same, so every `-reference` score is exactly 0 and its cache records name
/// the reference; a reference with another tokenizer (Qwen2.5-Coder-0.5B) is refused before any
/// item, as is a `-reference` method without a reference.
#[test]
fn reference_methods_are_zero_against_the_same_model_and_refuse_another_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let eval = |reference: Option<&std::path::Path>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_endorm"));
        command
            .args(["eval", "--quiet", "--threads", "2", "--n-ctx", "2048"])
            .args(["--limit", "2", "--model"])
            .arg(common::model_path())
            .arg("--data")
            .arg(data("obvious-prefs.jsonl"))
            .args(["--method", "endo,endo-reference,endo_mean-reference"])
            .args(["--method", "logprob-reference,logprob_mean-reference"])
            .arg("--report")
            .arg(&report);
        if let Some(reference) = reference {
            command.arg("--reference-model").arg(reference);
        }
        command.output().expect("run endorm")
    };
    let stderr =
        |output: &std::process::Output| String::from_utf8_lossy(&output.stderr).into_owned();

    let output = eval(Some(&common::model_path()));
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["reference_model"], "smollm2-135m-instruct", "{json}");
    let cache = std::fs::read_to_string(eval::cache_path(&report)).unwrap();
    let records: Vec<serde_json::Value> = cache
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|record: &serde_json::Value| record["pass"] == "reference")
        .collect();
    assert_eq!(records.len(), 2, "{cache}");
    for record in &records {
        assert_eq!(
            record["reference"]["model"], "smollm2-135m-instruct",
            "{record}"
        );
        let scores = record["scored"]["scores"].as_object().unwrap();
        assert_eq!(scores.len(), 4, "{record}");
        for values in scores.values() {
            let values = values["candidates"].as_array().unwrap();
            assert_eq!(values.len(), 2, "{record}");
            assert!(values.iter().all(|v| v.as_f64() == Some(0.0)), "{record}");
        }
    }
    // Ties everywhere; the model's own reward still decides.
    for method in json["methods"].as_array().unwrap() {
        assert_eq!(method["scored"], 2, "{method}");
        if method["method"] != "endo" {
            assert_eq!(method["accuracy"]["value"], 0.5, "{method}");
        }
    }

    let qwen = endorm::paths::model_dir()
        .map(|dir| dir.join("Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"))
        .filter(|path| path.is_file())
        .expect("Qwen2.5-Coder-0.5B is missing: endorm pull qwen2.5-coder-0.5b");
    let refused = eval(Some(&qwen));
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("has a vocabulary of 151936 tokens, the model 49152"),
        "{}",
        stderr(&refused)
    );
    let none = eval(None);
    assert!(!none.status.success());
    assert!(
        stderr(&none).contains("--reference-model MODEL"),
        "{}",
        stderr(&none)
    );
    // Neither refusal touched the cache.
    assert_eq!(
        std::fs::read_to_string(eval::cache_path(&report)).unwrap(),
        cache
    );
}

/// A ranking item in chat format is scored as `/v1/score` scores the prompt as the user's message
/// and each completion as the answer; `endo_lc` is that `endo` less the report's baseline per token
/// times the answer's tokens (`n_tokens` of the same request), and the request's own `endo_lc`.
#[test]
fn chat_ranking_items_score_as_chat_requests_and_endo_lc_subtracts_the_baseline_per_token() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("math.jsonl");
    let prompt = "What is 2 + 3? Answer with the number.";
    let completions = ["5", "The answer is 5, because 2 + 3 = 5.", "It is 7."];
    let item = serde_json::json!({"task_id": "m", "format": "chat", "prompt": prompt,
        "completions": completions, "passed": [true, true, false]});
    std::fs::write(&file, format!("{item}\n")).unwrap();
    let cache = eval::cache_path(&dir.path().join("report.json"));
    let mut scorer = common::scorer(common::options());
    let config = EvalConfig {
        data: file,
        cache: Some(cache.clone()),
        ..config("", &[Method::Endo, Method::EndoLengthControlled])
    };
    let report = eval::run(&mut scorer, None, &config).unwrap();
    assert_eq!(report.kind, "ranking");
    let b = report.baseline_per_token;
    assert!(b.is_finite() && b != 0.0, "baseline {b}");
    let length = method(&report, "endo").length.unwrap();
    assert!(
        length.balanced.is_some(),
        "a task with both labels and lengths: {length:?}"
    );
    let record: serde_json::Value = std::fs::read_to_string(&cache)
        .unwrap()
        .lines()
        .skip(1)
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|r| r["pass"] == "reward")
        .unwrap();
    let request = ScoreRequest {
        format: Some(Format::Chat),
        prompt: Some(prompt.into()),
        candidates: completions.iter().map(|c| c.to_string()).collect(),
        aggregate: Aggregate::EndoLc,
        ..ScoreRequest::default()
    };
    let expected = common::scorer(common::options())
        .score_request("test", &request, None)
        .unwrap();
    let scores = &record["scored"]["scores"];
    for (i, want) in expected.results.iter().enumerate() {
        let endo = scores["endo"]["candidates"][i].as_f64().unwrap();
        let lc = scores["endo_lc"]["candidates"][i].as_f64().unwrap();
        assert!(
            (endo - want.endo).abs() < 1e-4,
            "{i}: {endo} vs {}",
            want.endo
        );
        let n = want.n_tokens as f64;
        assert!(
            (lc - (endo - b * n)).abs() < 1e-6,
            "{i}: {lc} vs {endo} − {b}·{n}"
        );
        // The served aggregate: the same baseline, measured by the scorer for this request.
        assert!(
            (want.score - lc).abs() < 1e-4,
            "{i}: {} vs {lc}",
            want.score
        );
    }
}
