//! What reading a GGUF into memory costs against memory-mapping it (docs/RELIABILITY.md, "Model
//! files"): load time and resident memory after the load and after one scored request.
//!
//!     cargo run --release --example load_cost -- PATH read|mmap
//!
//! Run each mode in its own process, after a run that put the file in the page cache.

use std::path::PathBuf;
use std::time::Instant;

use endorm::api::ScoreRequest;
use endorm::engine::{ContextOptions, KvType, Model, ModelOptions, Scorer};

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kib / 1024.0
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(args.next().expect("PATH"));
    let use_mmap = match args.next().as_deref() {
        Some("mmap") => true,
        Some("read") => false,
        _ => panic!("read or mmap"),
    };
    let before = rss_mib();
    let started = Instant::now();
    let options = ModelOptions {
        use_mmap,
        ..ModelOptions::default()
    };
    let model = Model::load(&path, &options).expect("load");
    let load_s = started.elapsed().as_secs_f64();
    let after_load = rss_mib();
    let options = ContextOptions {
        n_ctx: 2048,
        n_batch: 512,
        n_threads: 2,
        max_sequences: 16,
        cache_slots: 0,
        cache_tokens: 2048,
        prefix_tree: true,
        type_k: KvType::Q8_0,
        type_v: KvType::Q8_0,
    };
    let mut scorer = Scorer::new(&model, options).expect("context");
    let request = ScoreRequest {
        prompt: Some("What is 2+2?".into()),
        candidates: vec!["4".into(), "5".into()],
        ..ScoreRequest::default()
    };
    scorer.score_request("m", &request, None).expect("score");
    let after_score = rss_mib();
    println!(
        "{} {}: load {load_s:.2} s, RSS {before:.0} -> {after_load:.0} MiB after load, {after_score:.0} MiB after one request",
        path.file_name().unwrap_or_default().to_string_lossy(),
        if use_mmap { "mmap" } else { "read" },
    );
}
