//! A model split over ggml's RPC workers: two real `endorm rpc-worker` processes on 127.0.0.1 and
//! `endorm serve --rpc` over both give the scores the model gives on this machine alone, within
//! the noise of a different layout (docs/SCALE.md). Every process is stopped by its PID.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{model_section, Daemon};

/// The largest difference allowed between a value on the workers and on this machine alone.
/// Measured: none, the values are bit-identical (docs/SCALE.md). A worker computes its layers
/// with the same ggml CPU kernels as the serving machine, on the same weights: this model's types
/// (Q4_1, one Q8_0) have no repacked x86 kernel, and endorm's x86 builds have no AMX. Elsewhere the
/// serving machine may repack a matrix a worker keeps plain (ARM repacks Q8_0), and the values
/// then move by kernel noise: the bound of the same model's values under other kernels and
/// layouts, 0.02 per token (reference.rs, tests/data/README.md).
const TOLERANCE: f64 = if cfg!(target_arch = "x86_64") {
    0.0
} else {
    0.02
};

/// A running `endorm rpc-worker`; killed (by its PID) when dropped.
struct Worker {
    child: Child,
    address: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Worker {
    /// Starts a worker on a free loopback port and waits until it accepts connections.
    fn start() -> Worker {
        let dir = tempfile::Builder::new()
            .prefix("rpc-worker")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("temp dir");
        // A port the kernel just handed out and took back: free unless another process grabs it
        // in the next milliseconds.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let address = format!("127.0.0.1:{port}");
        let log = dir.path().join("worker.log");
        let child = Command::new(env!("CARGO_BIN_EXE_endorm"))
            .args(["rpc-worker", "--listen", &address, "--threads", "1"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log file"))
            .stderr(std::fs::File::create(dir.path().join("worker.err")).expect("log file"))
            .spawn()
            .expect("start endorm rpc-worker");
        let mut worker = Worker {
            child,
            address,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&worker.address).is_err() {
            if let Ok(Some(status)) = worker.child.try_wait() {
                panic!("rpc-worker exited with {status}: {}", worker.output());
            }
            assert!(Instant::now() < deadline, "rpc-worker did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        worker
    }

    fn output(&self) -> String {
        let err = self.log.with_file_name("worker.err");
        format!(
            "{}{}",
            std::fs::read_to_string(&self.log).unwrap_or_default(),
            std::fs::read_to_string(err).unwrap_or_default()
        )
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The request both daemons answer: chat, four candidates, every token's reward.
fn request() -> Value {
    json!({
        "model": "m",
        "prompt": "Name a primary colour and say why it is called primary.",
        "candidates": [
            "Red: it cannot be mixed from other colours.",
            "Blue, because painters mix every other colour from it and two others.",
            "Green is a colour.",
            "I do not know."
        ],
        "return_tokens": true
    })
}

/// Scores `request` once to warm up, then three times; the last response and the median time.
fn score_timed(daemon: &Daemon) -> (Value, Duration) {
    daemon.ok("/v1/score", &request());
    let mut times = Vec::new();
    let mut response = Value::Null;
    for _ in 0..3 {
        let start = Instant::now();
        response = daemon.ok("/v1/score", &request());
        times.push(start.elapsed());
    }
    times.sort();
    (response, times[1])
}

/// Every number of two `/v1/score` responses side by side: (what, here, there).
fn values(a: &Value, b: &Value) -> Vec<(String, f64, f64)> {
    let mut out = Vec::new();
    let (a, b) = (&a["results"], &b["results"]);
    let n = a.as_array().expect("results").len();
    assert_eq!(n, b.as_array().expect("results").len());
    for i in 0..n {
        assert_eq!(a[i]["n_tokens"], b[i]["n_tokens"], "candidate {i}");
        for key in ["endo", "logprob"] {
            let (x, y) = (a[i][key].as_f64(), b[i][key].as_f64());
            out.push((format!("[{i}].{key}"), x.expect(key), y.expect(key)));
        }
        let tokens = a[i]["tokens"].as_array().expect("tokens");
        for (j, token) in tokens.iter().enumerate() {
            let other = &b[i]["tokens"][j];
            assert_eq!(token["token"], other["token"], "candidate {i} token {j}");
            for key in ["reward", "logprob"] {
                let (x, y) = (token[key].as_f64(), other[key].as_f64());
                out.push((
                    format!("[{i}].tokens[{j}].{key}"),
                    x.expect(key),
                    y.expect(key),
                ));
            }
        }
    }
    out
}

#[test]
fn a_model_split_over_two_rpc_workers_scores_as_on_this_machine_alone() {
    // One thread everywhere: the workers run their layers one after the other, so the split
    // model computes on one core at a time, as the model alone does here.
    let config = model_section("m");
    let (alone, alone_time) = {
        let daemon = Daemon::start(&config, &["--threads", "1"]);
        score_timed(&daemon)
    };

    let workers = [Worker::start(), Worker::start()];
    let list = format!("{},{}", workers[0].address, workers[1].address);
    let daemon = Daemon::start(&config, &["--threads", "1", "--rpc", &list]);
    let (split, split_time) = score_timed(&daemon);

    // Where the layers went: each worker holds a part of the weights.
    let log = daemon.log_text();
    let placed = log
        .lines()
        .find(|line| line.contains("model placed"))
        .unwrap_or_else(|| panic!("no placement line in the log:\n{log}"));
    for worker in &workers {
        let buffer = format!("[{}] model buffer size", worker.address);
        assert!(placed.contains(&buffer), "{buffer} not in: {placed}");
        assert!(
            worker.output().contains("Accepted client connection"),
            "worker {} was not used: {}",
            worker.address,
            worker.output()
        );
    }

    let values = values(&alone, &split);
    let (what, here, there) = values
        .iter()
        .max_by(|a, b| (a.1 - a.2).abs().total_cmp(&(b.1 - b.2).abs()))
        .expect("values");
    let largest = (here - there).abs();
    eprintln!(
        "rpc: {} values, largest difference {largest:.3e} at {what} ({here} alone, {there} on the \
         workers); median /v1/score {:.1} ms alone, {:.1} ms over two workers",
        values.len(),
        alone_time.as_secs_f64() * 1e3,
        split_time.as_secs_f64() * 1e3
    );
    assert!(
        largest <= TOLERANCE,
        "{what}: {here} alone, {there} on the workers"
    );
}

#[test]
fn an_unreachable_worker_fails_the_model_not_the_daemon() {
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let daemon = Daemon::spawn(
        &model_section("m"),
        &["--rpc", &format!("127.0.0.1:{port}")],
    );
    daemon.wait_for("the model to fail", |d| {
        d.try_get("/health")
            .is_some_and(|r| r.json()["models"][0]["state"] == "failed")
    });
    let health = daemon.get("/health").json();
    let error = health["models"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("cannot be reached"), "{health}");
    assert!(error.contains(&format!("127.0.0.1:{port}")), "{health}");
}

#[test]
fn rpc_endpoints_are_checked_before_anything_starts() {
    let output = Command::new(env!("CARGO_BIN_EXE_endorm"))
        .args([
            "serve",
            "--rpc",
            "127.0.0.1",
            "--socket",
            "/nonexistent/x.sock",
        ])
        .output()
        .expect("run endorm");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no port"), "{stderr}");

    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[defaults]\nrpc = [\"[::1]:50052\"]\n").expect("write config");
    let output = Command::new(env!("CARGO_BIN_EXE_endorm"))
        .args(["config", "check", "--config"])
        .arg(&config)
        .output()
        .expect("run endorm");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("IPv6"), "{stderr}");
}

#[test]
fn a_worker_off_loopback_is_warned_about_and_an_address_not_here_is_refused() {
    // 192.0.2.1 (TEST-NET-1, RFC 5737) is no address of this machine: the warning is printed,
    // then the bind fails, so nothing ever listens off loopback.
    let output = Command::new(env!("CARGO_BIN_EXE_endorm"))
        .args(["rpc-worker", "--listen", "192.0.2.1:50052"])
        .stdin(Stdio::null())
        .output()
        .expect("run endorm rpc-worker");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("WARNING") && stderr.contains("no authentication"),
        "{stderr}"
    );
    assert!(
        stderr.contains("cannot listen on 192.0.2.1:50052"),
        "{stderr}"
    );
}
