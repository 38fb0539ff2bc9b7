//! A model split over ggml's RPC workers: two real `endorm rpc-worker` processes on 127.0.0.1 and
//! `endorm serve --rpc` over both give the scores the model gives on this machine alone, within
//! the noise of a different layout (docs/SCALE.md). A worker killed (SIGKILL, by its PID) during a
//! request or while idle costs that model's requests a 503 `rpc_worker_lost`, never the daemon,
//! and the model comes back when a worker listens on the port again. Every process is stopped by
//! its PID.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{long_text, model_section, Daemon};

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
        // A port the kernel just handed out and took back: free unless another process grabs it
        // in the next milliseconds.
        Worker::start_on(free_port())
    }

    /// Starts a worker on `port` of 127.0.0.1 and waits until it accepts connections.
    fn start_on(port: u16) -> Worker {
        let dir = tempfile::Builder::new()
            .prefix("rpc-worker")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("temp dir");
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

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
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

    // `/v1/models` says where the layers are: each worker with its share of SmolLM2's 31 (30
    // repeating layers and the output layer, as llama.cpp counts them).
    let models = daemon.get("/v1/models").json();
    let placed = models["data"][0]["meta"]["rpc"]
        .as_array()
        .unwrap_or_else(|| panic!("no meta.rpc: {models}"));
    assert_eq!(placed.len(), 2, "{models}");
    let mut layers = 0;
    for (entry, worker) in placed.iter().zip(&workers) {
        assert_eq!(entry["worker"], worker.address.as_str(), "{models}");
        assert!(entry["layers"].as_u64().unwrap_or(0) > 0, "{models}");
        assert!(entry["weights_bytes"].as_u64().unwrap_or(0) > 0, "{models}");
        layers += entry["layers"].as_u64().unwrap_or(0);
    }
    assert_eq!(layers, 31, "every layer on a worker: {models}");
    assert!(
        models["data"][0]["meta"]["n_ctx_train"].as_u64() > Some(0),
        "{models}"
    );

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
fn an_unreachable_worker_degrades_the_model_until_it_listens() {
    // A port that was just free: nothing listens there.
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let daemon = Daemon::spawn(&model_section("m"), &["--rpc", &address]);
    daemon.wait_for("the model to be degraded", |d| {
        d.try_get("/health")
            .is_some_and(|r| r.json()["models"][0]["state"] == "degraded")
    });
    let health = daemon.get("/health").json();
    assert_eq!(health["status"], "degraded", "{health}");
    let error = health["models"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("cannot be reached"), "{health}");
    assert!(error.contains(&address), "{health}");
    let refused = daemon.post("/v1/score", &small_request());
    let message = refused.expect_error(503, "rpc_worker_lost");
    assert!(message.contains(&address), "{message}");
    assert!(refused.header("retry-after").is_some(), "{refused:?}");

    // The worker starts late: the model loads by itself (backoff 1, 2, 4 s...).
    let _worker = Worker::start_on(port);
    daemon.wait_ready();
    daemon.ok("/v1/score", &small_request());
}

/// A small request for model `m`.
fn small_request() -> Value {
    json!({"model": "m", "prompt": "Say yes.", "candidates": ["Yes.", "No."]})
}

/// A request that keeps a worker busy for a few seconds: a long context and 64 candidates, scored
/// in several groups (they do not all fit the context window beside it).
fn long_request() -> Value {
    let candidates: Vec<String> = (0..64).map(|i| format!("{} {i}", long_text(40))).collect();
    json!({"model": "m", "prompt": long_text(400), "format": "raw", "candidates": candidates})
}

/// The config of the tests below: `m` on the worker at `address` (one thread), `local` here.
fn lost_worker_config(address: &str) -> String {
    format!(
        "{}rpc = [\"{address}\"]\n{}",
        model_section("m"),
        model_section("local")
    )
}

/// What the daemon says while the worker at `address` is lost: `/health` degraded naming it, a
/// request to `m` answered 503 `rpc_worker_lost` with `Retry-After`, `local` still scoring.
fn check_lost(daemon: &mut Daemon, address: &str) {
    daemon.wait_for("the model to be degraded", |d| {
        d.try_get("/health")
            .is_some_and(|r| r.json()["status"] == "degraded")
    });
    let health = daemon.get("/health").json();
    let models = health["models"].as_array().expect("models");
    let m = models.iter().find(|m| m["id"] == "m").expect("m");
    assert_eq!(m["state"], "degraded", "{health}");
    let error = m["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(address) && error.contains("lost"),
        "{health}"
    );
    let local = models.iter().find(|m| m["id"] == "local").expect("local");
    assert_eq!(local["state"], "ready", "{health}");
    let refused = daemon.post("/v1/score", &small_request());
    let message = refused.expect_error(503, "rpc_worker_lost");
    assert!(message.contains(address), "{message}");
    assert!(refused.header("retry-after").is_some(), "{refused:?}");
    let mut local_request = small_request();
    local_request["model"] = json!("local");
    daemon.ok("/v1/score", &local_request);
    assert!(
        daemon.child.try_wait().expect("wait").is_none(),
        "the daemon died:\n{}",
        daemon.log_text()
    );
}

#[test]
fn a_worker_killed_mid_request_costs_a_503_not_the_daemon() {
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let mut worker = Worker::start_on(port);
    let mut daemon = Daemon::start(&lost_worker_config(&address), &[]);
    let before = daemon.ok("/v1/score", &small_request());

    let socket = daemon.socket.clone();
    let request = long_request().to_string();
    let in_flight = std::thread::spawn(move || {
        let stream = std::os::unix::net::UnixStream::connect(socket).expect("connect");
        crate::support::exchange(stream, "POST", "/v1/score", Some(request.as_bytes()), &[])
            .expect("an answer")
    });
    daemon.wait_for("the long request to run", |d| {
        d.try_get("/metrics")
            .is_some_and(|r| r.text().contains("endorm_queue_running{model=\"m\"} 1"))
    });
    worker.child.kill().expect("kill the worker");
    worker.child.wait().expect("reap the worker");
    let answer = in_flight.join().expect("the request thread");
    let message = answer.expect_error(503, "rpc_worker_lost");
    assert!(message.contains(&address), "{message}");
    assert!(answer.header("retry-after").is_some(), "{answer:?}");
    check_lost(&mut daemon, &address);

    // A worker on the same port again: the model is loaded again and scores as before.
    let _worker = Worker::start_on(port);
    daemon.wait_ready();
    let after = daemon.ok("/v1/score", &small_request());
    assert_eq!(after["results"], before["results"]);
}

#[test]
fn a_worker_killed_while_idle_is_found_before_the_next_request() {
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let mut worker = Worker::start_on(port);
    let mut daemon = Daemon::start(&lost_worker_config(&address), &[]);
    daemon.ok("/v1/score", &small_request());
    worker.child.kill().expect("kill the worker");
    worker.child.wait().expect("reap the worker");
    // No request: the daemon's pings of the idle model find the worker gone.
    check_lost(&mut daemon, &address);
    let log = daemon.log_text();
    assert!(
        log.contains("rpc_worker_lost") || log.contains("is lost"),
        "{log}"
    );

    let _worker = Worker::start_on(port);
    daemon.wait_ready();
    daemon.ok("/v1/score", &small_request());
}

#[test]
fn a_daemon_waiting_for_a_busy_worker_says_so() {
    let worker = Worker::start();
    let first = Daemon::start(&model_section("m"), &["--rpc", &worker.address]);
    // ggml's server takes one client at a time: the second daemon waits for the first.
    let mut second = Daemon::spawn(&model_section("m"), &["--rpc", &worker.address]);
    second.wait_for("the wait to be reported", |d| {
        d.try_get("/health").is_some_and(|r| {
            r.json()["models"][0]["waiting_on"]
                .as_str()
                .is_some_and(|w| w.contains(&worker.address) && w.contains("one client at a time"))
        })
    });
    assert!(
        second.log_text().contains("one client at a time"),
        "{}",
        second.log_text()
    );
    drop(first);
    second.wait_ready();
    second.ok("/v1/score", &small_request());
    assert!(second.child.try_wait().expect("wait").is_none());
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
