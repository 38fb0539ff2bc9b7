//! The GPU path (`--features vulkan`), run where CI has no GPU: on Mesa's software Vulkan device
//! (lavapipe), as llama.cpp's own CI does. The daemon with every layer offloaded scores the
//! foundation cases within [`TOKEN_TOLERANCE`] of the same binary on the CPU and ranks them alike;
//! every scoring route runs there; `/v1/models` and the log say where the layers and the KV cache
//! went; and without a Vulkan driver the same binary serves from the CPU with one warning.
//! Lavapipe lists itself as a CPU, which ggml skips unless `GGML_VK_VISIBLE_DEVICES=0` names it
//! (scripts/test sets it). `ENDORM_TEST_N_GPU_LAYERS=99` puts the in-process model of the other
//! modules on the GPU too (`scoring::` then counts decodes there; too slow on lavapipe for CI).

use std::sync::OnceLock;

use serde_json::{json, Value};

use crate::common;
use crate::support::{model_section, Daemon};

/// Per-token |Δ| (logprob, q, v_next, reward) allowed between the GPU and the CPU alone. Measured
/// on lavapipe (Mesa 25.0.7) over the foundation cases' 220 values: max 2.39 (q), mean 0.214; endo
/// max 2.76; no ranking changed. The CPU multiplies the Q4_1 weights by activations rounded to 8
/// bits, the GPU's shaders by float ones: CPU and fp32 differ as much (max 1.86, sums 2.25,
/// tests/data/README.md). The rankings are the sharper check.
const TOKEN_TOLERANCE: f64 = 3.0;
/// Mean per-token |Δ| allowed.
const MEAN_TOLERANCE: f64 = 0.3;
/// |Δ| allowed for a candidate's sums (`endo`, `logprob`) and the rewards built from them.
const SUM_TOLERANCE: f64 = 3.5;
/// SmolLM2-135M's 30 blocks and its output layer, as llama.cpp counts layers to offload.
const N_LAYERS: u64 = 31;
/// llama.cpp's own lines and endorm's, in the log the tests read.
const LOG: &str = "warn,endorm=info,llama-cpp-2=info";

fn start(n_gpu_layers: &str, env: &[(&str, &str)]) -> Daemon {
    let mut env = env.to_vec();
    env.push(("RUST_LOG", LOG));
    let daemon = Daemon::spawn_env(&model_section("m"), &["--n-gpu-layers", n_gpu_layers], &env);
    daemon.wait_ready();
    daemon
}

/// The Vulkan build with every layer on the GPU.
fn gpu() -> &'static Daemon {
    static DAEMON: OnceLock<Daemon> = OnceLock::new();
    DAEMON.get_or_init(|| start("99", &[]))
}

/// The Vulkan loader pointed at no driver (llama.cpp's #11493 crashed there).
const NO_DRIVER: [(&str, &str); 2] = [
    ("VK_ICD_FILENAMES", "/nonexistent"),
    ("VK_DRIVER_FILES", "/nonexistent"),
];

/// The same binary on the CPU alone. With a GPU in sight, `--n-gpu-layers 0` is not the CPU:
/// llama.cpp still sends large batches' matrix products to it (`op_offload`), so the GPU is hidden.
fn cpu() -> &'static Daemon {
    static DAEMON: OnceLock<Daemon> = OnceLock::new();
    DAEMON.get_or_init(|| start("0", &NO_DRIVER))
}

fn meta(daemon: &Daemon) -> Value {
    daemon.get("/v1/models").json()["data"][0]["meta"].clone()
}

fn on_vulkan(meta: &Value) -> bool {
    meta["device"]
        .as_str()
        .is_some_and(|d| d.starts_with("Vulkan0"))
}

fn f(value: &Value) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("not a number: {value}"))
}

/// The foundation tests' cases as `/v1/score` bodies, with the per-token values.
fn cases() -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(common::data_dir().join("cases.json")).unwrap();
    let cases: Vec<Value> = serde_json::from_str(&text).unwrap();
    cases
        .into_iter()
        .map(|case| {
            let mut body = case.as_object().unwrap().clone();
            let name = body.remove("name").unwrap().as_str().unwrap().to_owned();
            body.insert("return_tokens".into(), json!(true));
            (name, Value::Object(body))
        })
        .collect()
}

/// The largest |Δ| seen for each kind of value.
#[derive(Default, Debug)]
struct Largest {
    logprob: f64,
    q: f64,
    v_next: f64,
    reward: f64,
    sums: f64,
    total: f64,
    count: usize,
}

impl Largest {
    fn per_token(&self) -> f64 {
        self.logprob.max(self.q).max(self.v_next).max(self.reward)
    }

    fn mean(&self) -> f64 {
        self.total / self.count.max(1) as f64
    }
}

/// Compares two `/v1/score` responses: the same tokens and order, values within the tolerances.
fn compare_scores(gpu: &Value, cpu: &Value, what: &str, largest: &mut Largest) {
    assert_eq!(gpu["order"], cpu["order"], "{what}: the ranking changed");
    let (gpu, cpu) = (
        gpu["results"].as_array().unwrap(),
        cpu["results"].as_array().unwrap(),
    );
    assert_eq!(gpu.len(), cpu.len(), "{what}");
    for (g, c) in gpu.iter().zip(cpu) {
        for sum in ["endo", "logprob"] {
            largest.sums = largest.sums.max((f(&g[sum]) - f(&c[sum])).abs());
        }
        let (gt, ct) = (
            g["tokens"].as_array().unwrap(),
            c["tokens"].as_array().unwrap(),
        );
        assert_eq!(gt.len(), ct.len(), "{what}");
        for (s, t) in gt.iter().zip(ct) {
            assert_eq!(s["id"], t["id"], "{what}");
            for (field, max) in [
                ("logprob", &mut largest.logprob),
                ("q", &mut largest.q),
                ("v_next", &mut largest.v_next),
                ("reward", &mut largest.reward),
            ] {
                let delta = (f(&s[field]) - f(&t[field])).abs();
                *max = max.max(delta);
                largest.total += delta;
                largest.count += 1;
            }
        }
    }
}

#[test]
fn the_gpu_daemon_scores_the_foundation_cases_as_the_cpu_does() {
    let (gpu, cpu) = (gpu(), cpu());
    assert!(
        on_vulkan(&meta(gpu)),
        "not on a Vulkan device: {} (where the only Vulkan device is a CPU, llvmpipe, ggml uses \
         it only when GGML_VK_VISIBLE_DEVICES=0 names it; scripts/test does)",
        meta(gpu)
    );
    let mut largest = Largest::default();
    for (name, body) in cases() {
        compare_scores(
            &gpu.ok("/v1/score", &body),
            &cpu.ok("/v1/score", &body),
            &name,
            &mut largest,
        );
    }
    eprintln!("GPU vs CPU, max |Δ| over the foundation cases: {largest:?}");
    assert!(
        largest.per_token() <= TOKEN_TOLERANCE
            && largest.mean() <= MEAN_TOLERANCE
            && largest.sums <= SUM_TOLERANCE,
        "{largest:?}"
    );
    assert!(
        largest.per_token() > 0.0,
        "bit-identical values: is the GPU daemon really computing on the GPU?"
    );
}

#[test]
fn every_scoring_route_runs_on_the_gpu() {
    let (gpu, cpu) = (gpu(), cpu());
    let mut largest = Largest::default();
    // /v1/score, chat and raw, with the options that add passes.
    let score = json!({"prompt": "Name a primary colour.", "candidates": ["Red.", "Banana", "I'm not sure."],
                       "return_tokens": true});
    compare_scores(
        &gpu.ok("/v1/score", &score),
        &cpu.ok("/v1/score", &score),
        "chat",
        &mut largest,
    );

    // /v1/rerank (Cohere's shape): the same order, relevance within the sums' tolerance.
    let rerank = json!({"query": "What is the capital of France?",
                        "documents": ["London.", "Paris.", "Berlin is nice."]});
    let (g, c) = (gpu.ok("/v1/rerank", &rerank), cpu.ok("/v1/rerank", &rerank));
    let indices = |r: &Value| -> Vec<Value> {
        r["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["index"].clone())
            .collect()
    };
    assert_eq!(indices(&g), indices(&c), "rerank order: {g} vs {c}");

    // /v1/completions as lm-evaluation-harness asks for log-likelihoods: the prompt echoed with
    // each token's log-probability, nothing generated.
    let completions = json!({"prompt": ["The capital of France is Paris.", "def add(a, b):\n    return a + b\n"],
                             "echo": true, "max_tokens": 0, "logprobs": 1, "temperature": 0});
    let (g, c) = (
        gpu.ok("/v1/completions", &completions),
        cpu.ok("/v1/completions", &completions),
    );
    for (gc, cc) in g["choices"]
        .as_array()
        .unwrap()
        .iter()
        .zip(c["choices"].as_array().unwrap())
    {
        assert_eq!(gc["logprobs"]["tokens"], cc["logprobs"]["tokens"]);
        let (gl, cl) = (
            gc["logprobs"]["token_logprobs"].as_array().unwrap(),
            cc["logprobs"]["token_logprobs"].as_array().unwrap(),
        );
        assert!(gl.len() > 5 && gl[0].is_null() && cl[0].is_null(), "{gc}");
        for (x, y) in gl.iter().zip(cl).skip(1) {
            largest.logprob = largest.logprob.max((f(x) - f(y)).abs());
        }
    }

    // /get_reward (OpenRLHF's remote reward model).
    let reward = json!({"query": ["The capital of France is Paris.", "The capital of France is Rome."],
                        "prompts": ["The capital of France is", "The capital of France is"]});
    let (g, c) = (
        gpu.ok("/get_reward", &reward),
        cpu.ok("/get_reward", &reward),
    );
    for (x, y) in g["rewards"]
        .as_array()
        .unwrap()
        .iter()
        .zip(c["rewards"].as_array().unwrap())
    {
        largest.sums = largest.sums.max((f(x) - f(y)).abs());
    }
    eprintln!("GPU vs CPU, max |Δ| over the routes: {largest:?}");
    assert!(
        largest.per_token() <= TOKEN_TOLERANCE && largest.sums <= SUM_TOLERANCE,
        "{largest:?}"
    );
}

/// The lines of llama.cpp's log that say which buffer a device holds.
fn buffers(daemon: &Daemon, kind: &str) -> Vec<String> {
    daemon
        .log_text()
        .lines()
        .filter(|l| l.contains(&format!("{kind} buffer size")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn models_and_the_log_say_where_the_layers_and_the_kv_cache_are() {
    let (gpu, cpu) = (gpu(), cpu());
    let on_gpu = meta(gpu);
    assert!(on_vulkan(&on_gpu), "{on_gpu}");
    // 99 is more layers than the model has: all of them.
    assert_eq!(on_gpu["gpu_layers"], N_LAYERS, "{on_gpu}");
    assert_eq!(on_gpu["n_layers"], N_LAYERS, "{on_gpu}");
    assert_eq!(on_gpu["kv_cache"], on_gpu["device"], "{on_gpu}");
    // llama.cpp's own account agrees: weights and KV cache in Vulkan0's buffers.
    let model = buffers(gpu, "model");
    assert!(
        model.iter().any(|l| l.contains("Vulkan0 model")),
        "{model:?}"
    );
    let kv = buffers(gpu, "KV");
    assert!(
        !kv.is_empty() && kv.iter().all(|l| l.contains("Vulkan0 KV")),
        "{kv:?}"
    );
    let ready = gpu.log_text();
    assert!(
        ready.contains("placement=31/31 layers on Vulkan0"),
        "the \"model ready\" line names the device: {ready}"
    );

    let on_cpu = meta(cpu);
    assert_eq!(
        (
            &on_cpu["device"],
            &on_cpu["gpu_layers"],
            &on_cpu["kv_cache"]
        ),
        (&json!("CPU"), &json!(0), &json!("CPU")),
        "{on_cpu}"
    );
    assert!(buffers(cpu, "KV").iter().all(|l| l.contains("CPU KV")));
    assert!(
        !cpu.log_text().contains("runs on the CPU"),
        "no warning when no GPU layer was asked for"
    );
}

#[test]
fn a_partial_offload_splits_the_layers_and_the_kv_cache() {
    let part = start("11", &[]);
    let meta = meta(&part);
    assert_eq!(meta["gpu_layers"], 11, "{meta}");
    let kv = meta["kv_cache"].as_str().unwrap();
    assert!(
        kv.starts_with("Vulkan0") && kv.ends_with("(10 layers), CPU (20 layers)"),
        "{meta}"
    );
    // llama.cpp puts each block's KV cache with the block: some on each.
    let buffers = buffers(&part, "KV");
    assert!(
        buffers.iter().any(|l| l.contains("Vulkan0 KV"))
            && buffers.iter().any(|l| l.contains("CPU KV")),
        "{buffers:?}"
    );
    let mut largest = Largest::default();
    let (name, body) = &cases()[0];
    compare_scores(
        &part.ok("/v1/score", body),
        &cpu().ok("/v1/score", body),
        name,
        &mut largest,
    );
    assert!(largest.per_token() <= TOKEN_TOLERANCE, "{largest:?}");
}

#[test]
fn without_a_vulkan_driver_the_model_runs_on_the_cpu_with_one_warning() {
    let none = start("99", &NO_DRIVER);
    let meta = meta(&none);
    assert_eq!(
        (&meta["device"], &meta["gpu_layers"], &meta["kv_cache"]),
        (&json!("CPU"), &json!(0), &json!("CPU")),
        "{meta}"
    );
    let log = none.log_text();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("every layer runs on the CPU"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("WARN") && warnings[0].contains("Vulkan backend found no GPU"),
        "{log}"
    );
    // It scores as the CPU does: the same kernels.
    let (_, body) = &cases()[2];
    let (got, want) = (none.ok("/v1/score", body), cpu().ok("/v1/score", body));
    let mut largest = Largest::default();
    compare_scores(&got, &want, "no driver", &mut largest);
    assert!(largest.per_token() < 1e-6, "{largest:?}");
}
