//! The daemon's life, each test with its own `endorm serve`: SIGTERM during a request, hot reload
//! while requests run, a full queue, a client that leaves, and the TCP listener's token.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support;
use crate::support::{long_text, model_section, Daemon};

/// A request that keeps a worker busy for a while (a long raw context and several candidates).
fn heavy() -> Value {
    let candidates: Vec<String> = (0..8)
        .map(|i| format!(" and then {i} more words of text follow here"))
        .collect();
    json!({"format": "raw", "prompt": long_text(450), "candidates": candidates})
}

fn metric(daemon: &Daemon, name: &str) -> f64 {
    let text = daemon.get("/metrics").text();
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

fn metric_or_zero(daemon: &Daemon, name: &str) -> f64 {
    let text = daemon.get("/metrics").text();
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

#[test]
fn sigterm_lets_the_running_request_finish_then_removes_the_socket() {
    // A grace period no loaded test machine can run past: the request must finish, not be cut.
    let config = format!(
        "[server]\nshutdown_grace_secs = 600\n\n{}",
        model_section("m")
    );
    let mut daemon = Daemon::start(&config, &[]);
    let socket = daemon.socket.clone();
    let answer = std::thread::scope(|scope| {
        let request = scope.spawn(|| daemon.post("/v1/score", &heavy()));
        daemon.wait_for("the request to start running", |d| {
            metric(d, "endorm_queue_running{model=\"m\"}") >= 1.0
        });
        daemon.terminate();
        request.join().expect("client")
    });
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["results"].as_array().unwrap().len(), 8);
    let status = daemon.wait_exit(60);
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        daemon.log_text()
    );
    assert!(!socket.exists(), "the socket is removed on exit");
}

#[test]
fn hot_reload_adds_and_removes_models_while_requests_run() {
    let daemon = Daemon::start(&model_section("a"), &[]);
    let score = |model: &str| {
        daemon
            .post(
                "/v1/score",
                &json!({"model": model, "prompt": "Hi", "candidates": ["Hello!", "Go away."]}),
            )
            .status
    };
    let ids = |d: &Daemon| -> Vec<String> {
        d.get("/v1/models").json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["state"] == "ready")
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        // Requests to "a" run throughout: each answers 200 until "a" is removed, then 404; never 5xx.
        let background = scope.spawn(|| {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                statuses.push(score("a"));
            }
            statuses
        });

        daemon.write_config(&format!("{}\n{}", model_section("a"), model_section("b")));
        daemon.wait_for("model b to load", |d| ids(d) == ["a", "b"]);
        assert_eq!(score("b"), 200);

        daemon.write_config(&model_section("b"));
        daemon.wait_for("model a to be removed", |d| ids(d) == ["b"]);
        assert_eq!(score("a"), 404);
        assert_eq!(score("b"), 200);

        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let statuses = background.join().expect("background client");
        assert!(statuses.contains(&200), "{statuses:?}");
        assert!(
            statuses.iter().all(|&s| s == 200 || s == 404),
            "{statuses:?}"
        );
        let first_404 = statuses
            .iter()
            .position(|&s| s == 404)
            .unwrap_or(statuses.len());
        assert!(
            statuses[first_404..].iter().all(|&s| s == 404),
            "{statuses:?}"
        );
    });

    // Changing a model's settings loads it again; the old one serves until the new one is ready,
    // so requests never see it loading.
    let n_ctx = |d: &Daemon| d.get("/v1/models").json()["data"][0]["meta"]["n_ctx"].clone();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let background = scope.spawn(|| {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                statuses.push(score("b"));
            }
            statuses
        });
        daemon.write_config(&model_section("b").replace("n_ctx = 2048", "n_ctx = 1024"));
        daemon.wait_for("model b to reload with n_ctx 1024", |d| n_ctx(d) == 1024);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let statuses = background.join().expect("background client");
        assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    });

    // A broken config is reported and the last good one keeps serving.
    daemon.write_config("[models.b\npath = ");
    daemon.wait_for("the config error in /health", |d| {
        d.get("/health").json().get("config_error").is_some()
    });
    let health = daemon.get("/health").json();
    assert_eq!(health["status"], "degraded");
    assert!(
        health["config_error"]
            .as_str()
            .unwrap()
            .contains("config.toml"),
        "{health}"
    );
    assert_eq!(score("b"), 200);
    daemon.write_config(&model_section("b"));
    daemon.wait_for("the config error to clear", |d| {
        d.get("/health").json()["status"] == "ok"
    });
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let config = format!("[server]\nqueue_depth = 1\n\n{}", model_section("m"));
    let daemon = Daemon::start(&config, &[]);
    let statuses: Vec<support::Response> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|_| scope.spawn(|| daemon.post("/v1/score", &heavy())))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client"))
            .collect()
    });
    let ok = statuses.iter().filter(|r| r.status == 200).count();
    let busy: Vec<&support::Response> = statuses.iter().filter(|r| r.status == 503).collect();
    assert!(
        ok >= 1,
        "{:?}",
        statuses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(
        !busy.is_empty(),
        "{:?}",
        statuses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(ok + busy.len(), 6);
    for response in busy {
        let message = response.expect_error(503, "queue_full");
        assert!(message.contains("queue_depth"), "{message}");
        assert_eq!(response.header("retry-after"), Some("1"));
    }
}

#[test]
fn a_client_that_leaves_before_its_job_starts_cancels_it() {
    let daemon = Daemon::start(&model_section("m"), &[]);
    let running = |d: &Daemon| metric(d, "endorm_queue_running{model=\"m\"}");
    let waiting = |d: &Daemon| metric(d, "endorm_queue_waiting{model=\"m\"}");
    let done = |d: &Daemon| {
        metric_or_zero(
            d,
            "endorm_requests_total{route=\"/v1/score\",status=\"200\"}",
        )
    };
    std::thread::scope(|scope| {
        // Two slow requests: one runs, one waits behind it.
        let ahead: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| daemon.post("/v1/score", &heavy())))
            .collect();
        daemon.wait_for("one request running and one waiting", |d| {
            running(d) >= 1.0 && waiting(d) >= 1.0
        });
        // A third queues behind them, and its client hangs up before its turn.
        {
            use std::io::Write as _;
            let mut stream = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
            let body = heavy().to_string();
            write!(
                stream,
                "POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            daemon.wait_for("the third request to queue", |d| {
                running(d) + waiting(d) + done(d) >= 3.0
            });
        }
        for client in ahead {
            assert_eq!(client.join().expect("client").status, 200);
        }
    });
    daemon.wait_for("the queued job to be skipped", |d| {
        metric(d, "endorm_jobs_cancelled_total") >= 1.0
    });
    assert_eq!(done(&daemon), 2.0, "the cancelled request was not answered");
}

#[test]
fn tcp_needs_the_bearer_token_and_loopback() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(
        &model_section("m"),
        &["--listen", &address, "--token", LONG_TOKEN],
    );
    let tcp = |headers: &[(&str, &str)]| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match std::net::TcpStream::connect(&address) {
                Ok(stream) => {
                    return support::exchange(stream, "GET", "/v1/models", None, headers).unwrap()
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("cannot connect to {address}: {e}"),
            }
        }
    };
    let none = tcp(&[]);
    none.expect_error(401, "invalid_token");
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    tcp(&[("Authorization", "Bearer wrong")]).expect_error(401, "invalid_token");
    let ok = tcp(&[("Authorization", &format!("Bearer {LONG_TOKEN}"))]);
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["data"][0]["id"], "m");
    // The socket needs no token.
    assert_eq!(daemon.get("/v1/models").status, 200);

    let remote = std::process::Command::new(env!("CARGO_BIN_EXE_endorm"))
        .args([
            "serve",
            "--socket",
            "/tmp/endorm-never.sock",
            "--listen",
            "0.0.0.0:8765",
        ])
        .args(["--config", daemon.config.to_str().unwrap()])
        .output()
        .expect("run endorm serve");
    assert!(!remote.status.success());
    assert!(String::from_utf8_lossy(&remote.stderr).contains("loopback"));
}

#[test]
fn auth_none_serves_tcp_without_a_token_as_openrlhf_calls_it() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let config = format!(
        "[server]\nlisten = \"{address}\"\nauth = \"none\"\n\n{}",
        model_section("m")
    );
    let daemon = Daemon::start(&config, &[]);
    // OpenRLHF's remote reward call: a POST with only Content-Type.
    let body = json!({"query": ["The capital of France is Paris."], "prompts": ["The capital of France is"],
                      "labels": [""]});
    let deadline = Instant::now() + Duration::from_secs(10);
    let response = loop {
        match std::net::TcpStream::connect(&address) {
            Ok(stream) => {
                let bytes = body.to_string().into_bytes();
                break support::exchange(stream, "POST", "/get_reward", Some(&bytes), &[]).unwrap();
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("cannot connect to {address}: {e}"),
        }
    };
    assert_eq!(response.status, 200, "{}", response.text());
    let over_socket = daemon.post("/get_reward", &body).json();
    assert_eq!(response.json()["rewards"], over_socket["rewards"]);
    assert!(
        daemon.log_text().contains("auth = \"none\""),
        "the log warns: {}",
        daemon.log_text()
    );
}

#[test]
fn a_generated_token_is_written_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let token_file = scratch.path().join("token");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = {:?}\n\n{}",
        token_file.display().to_string(),
        model_section("m")
    );
    let daemon = Daemon::start(&config, &[]);
    let token = std::fs::read_to_string(&token_file)
        .expect("token file")
        .trim()
        .to_owned();
    assert_eq!(token.len(), 64);
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = format!("Bearer {token}");
    let ok =
        support::exchange(stream, "GET", "/health", None, &[("Authorization", &auth)]).unwrap();
    assert_eq!(ok.status, 200);
    let socket_mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(socket_mode, 0o600);
}

#[test]
fn a_stale_socket_is_replaced() {
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let stale = scratch.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let mut daemon = Daemon::spawn(&model_section("m"), &["--socket", stale.to_str().unwrap()]);
    daemon.socket = stale.clone();
    daemon.wait_ready();
    assert_eq!(daemon.get("/health").status, 200);
}

#[test]
fn serve_with_model_needs_no_config() {
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let socket = scratch.path().join("s.sock");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_endorm"))
        .args([
            "serve",
            "--exit-on-eof",
            "--socket",
            socket.to_str().unwrap(),
        ])
        .args(["--model", support::model_path().to_str().unwrap()])
        .env("XDG_CONFIG_HOME", scratch.path())
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let health = loop {
        let answer = std::os::unix::net::UnixStream::connect(&socket)
            .ok()
            .and_then(|s| support::exchange(s, "GET", "/health", None, &[]).ok());
        match answer {
            Some(r) if r.status == 200 => break r.json(),
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => panic!("no answer on {}", socket.display()),
        }
    };
    assert_eq!(health["models"][0]["id"], "smollm2-135m-instruct");
    drop(child.stdin.take());
    assert!(
        child.wait().unwrap().success(),
        "closing stdin stops the daemon cleanly"
    );
}

/// The log without terminal colour codes.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn each_request_logs_one_line_with_route_status_tokens_and_time() {
    let daemon = Daemon::start(&model_section("m"), &[]);
    let response = daemon.post(
        "/v1/score",
        &json!({"prompt": "Hi", "candidates": ["Hello"]}),
    );
    assert_eq!(response.status, 200);
    let id = response
        .header("x-request-id")
        .expect("x-request-id")
        .to_owned();
    daemon
        .post_raw("/v1/score", b"{")
        .expect_error(400, "invalid_json");
    let tokens = response.json()["usage"]["total_tokens"].as_u64().unwrap();
    daemon.wait_for("the log lines", |d| {
        plain(&d.log_text()).contains("status=400")
    });
    let log = plain(&daemon.log_text());
    let line = log
        .lines()
        .find(|l| l.contains(&format!("request_id={id} ")))
        .unwrap_or_else(|| panic!("no line for request {id} in\n{log}"));
    for part in [
        "method=POST",
        "route=\"/v1/score\"",
        "status=200",
        // The test process on the Unix socket is the client (fairness).
        &format!("client=\"pid:{}\"", std::process::id()),
        &format!("tokens={tokens}"),
        "ms=",
    ] {
        assert!(line.contains(part), "{part} missing in {line}");
    }
}

fn endorm(args: &[&str], config_home: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_endorm"))
        .args(args)
        .env("XDG_CONFIG_HOME", config_home)
        .output()
        .expect("run endorm")
}

#[test]
fn config_path_show_and_check() {
    let home = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = endorm(&["config", "path"], home.path());
    assert!(path.status.success());
    assert_eq!(
        String::from_utf8_lossy(&path.stdout).trim(),
        home.path().join("endorm/config.toml").display().to_string()
    );

    let good = home.path().join("good.toml");
    std::fs::write(&good, model_section("m")).unwrap();
    let check = endorm(
        &["config", "check", "--config", good.to_str().unwrap()],
        home.path(),
    );
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("ok, 1 model(s)"));
    let show = endorm(
        &["config", "show", "--config", good.to_str().unwrap()],
        home.path(),
    );
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(show.status.success());
    for part in [
        "max_body_bytes = 8388608",
        "queue_depth = 64",
        "max_job_tokens = 16384",
        "[models.m]",
        "n_ctx = 2048",
        "m (default)",
    ] {
        assert!(shown.contains(part), "{part} missing in\n{shown}");
    }

    for (text, needle) in [
        ("[server]\nqueue_depth = \"x\"\n", "queue_depth"),
        ("[server]\nmax_job_tokens = 0\n", "max_job_tokens"),
        (
            "[models.m]\npath = \"/nowhere/model.gguf\"\n",
            "/nowhere/model.gguf",
        ),
        ("[server]\nlisten = \"192.168.1.2:80\"\n", "loopback"),
        ("[models.m\n", "config"),
    ] {
        let bad = home.path().join("bad.toml");
        std::fs::write(&bad, text).unwrap();
        let check = endorm(
            &["config", "check", "--config", bad.to_str().unwrap()],
            home.path(),
        );
        assert!(!check.status.success(), "{text}");
        let stderr = String::from_utf8_lossy(&check.stderr);
        assert!(stderr.contains(needle), "{needle} missing in {stderr}");
    }
    // The documented default config is valid.
    let documented = concat!(env!("CARGO_MANIFEST_DIR"), "/config/endorm.toml");
    let check = endorm(&["config", "check", "--config", documented], home.path());
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// `model_section(id)` with the model's path replaced by `path`.
fn model_section_at(id: &str, path: &std::path::Path) -> String {
    model_section(id).replace(
        &support::model_path().display().to_string(),
        &path.display().to_string(),
    )
}

#[test]
fn a_reload_onto_a_broken_model_file_keeps_the_last_good_model_serving() {
    let daemon = Daemon::start(&model_section("m"), &[]);
    let control = json!({"prompt": "What is 2+2?", "candidates": ["4", "5", "22"]});
    let expected = daemon.ok("/v1/score", &control)["results"].clone();

    let dir = daemon.dir.path();
    let model = std::fs::read(support::model_path()).unwrap();
    let gguf_header = |tensors: u64, kvs: u64| {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&tensors.to_le_bytes());
        bytes.extend_from_slice(&kvs.to_le_bytes());
        bytes
    };
    // One key whose name claims to be 2^62 bytes long.
    let mut long_key = gguf_header(0, 1);
    long_key.extend_from_slice(&(1u64 << 62).to_le_bytes());
    long_key.extend_from_slice(b"general.architecture");
    let broken: Vec<(&str, Option<Vec<u8>>)> = vec![
        ("missing.gguf", None),
        ("empty.gguf", Some(Vec::new())),
        ("truncated-header.gguf", Some(model[..64 * 1024].to_vec())),
        (
            "truncated-data.gguf",
            Some(model[..model.len() / 2].to_vec()),
        ),
        (
            "absurd-counts.gguf",
            Some(gguf_header(u64::MAX / 2, u64::MAX / 2)),
        ),
        ("absurd-tensors.gguf", Some(gguf_header(u64::MAX, 0))),
        ("absurd-key.gguf", Some(long_key)),
    ];
    for (name, contents) in broken {
        let path = dir.join(name);
        if let Some(contents) = contents {
            std::fs::write(&path, contents).unwrap();
        }
        daemon.write_config(&model_section_at("m", &path));
        daemon.wait_for(&format!("{name}: the failed reload in /health"), |d| {
            d.get("/health").json()["status"] != "ok"
        });
        let health = daemon.get("/health").json();
        assert_eq!(health["status"], "degraded", "{name}: {health}");
        assert_eq!(health["models"][0]["state"], "ready", "{name}: {health}");
        let error = health["config_error"].as_str().unwrap_or_default();
        assert!(
            error.contains("model m") && error.contains(name),
            "{name}: {health}"
        );
        let again = daemon.ok("/v1/score", &control);
        assert_eq!(again["results"], expected, "{name}: the old model answers");

        daemon.write_config(&model_section("m"));
        daemon.wait_for(&format!("{name}: the error to clear"), |d| {
            d.get("/health").json()["status"] == "ok"
        });
        assert_eq!(daemon.ok("/v1/score", &control)["results"], expected);
    }
    let log = plain(&daemon.log_text());
    assert!(
        !log.contains("now serves"),
        "a failed load is not announced as serving:\n{log}"
    );
    assert!(log.contains("keeps serving"), "{log}");
}

#[test]
fn alpha_outside_its_finite_range_is_a_400_and_inside_it_every_score_is_finite() {
    let daemon = Daemon::start(&model_section("m"), &[]);
    let request = |alpha: f64| json!({"prompt": "What is 2+2?", "candidates": ["4", "5"], "alpha": alpha, "aggregate": "logprob"});
    for alpha in [1.7e308, 1e300, 5000.0, 1e-4, 1e-300] {
        let response = daemon.post("/v1/score", &request(alpha));
        let message = response.expect_error(400, "invalid_request");
        assert!(message.contains("alpha"), "{alpha}: {message}");
    }
    for alpha in [1e-3, 1.0, 1e3] {
        let body = daemon.ok("/v1/score", &request(alpha));
        for result in body["results"].as_array().unwrap() {
            for key in ["score", "endo", "endo_mean", "logprob", "logprob_mean"] {
                assert!(result[key].is_f64(), "alpha {alpha}: {key} in {body}");
            }
        }
    }
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` over TCP with `headers`, retrying the connection while the daemon starts.
fn tcp_get(address: &str, path: &str, headers: &[(&str, &str)]) -> support::Response {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::net::TcpStream::connect(address) {
            Ok(stream) => return support::exchange(stream, "GET", path, None, headers).unwrap(),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("cannot connect to {address}: {e}"),
        }
    }
}

const LONG_TOKEN: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn the_bearer_scheme_is_matched_case_insensitively() {
    let address = format!("127.0.0.1:{}", free_port());
    let _daemon = Daemon::start(
        &model_section("m"),
        &["--listen", &address, "--token", LONG_TOKEN],
    );
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let auth = format!("{scheme} {LONG_TOKEN}");
        let response = tcp_get(&address, "/health", &[("Authorization", &auth)]);
        assert_eq!(response.status, 200, "{auth}: {}", response.text());
    }
    tcp_get(
        &address,
        "/health",
        &[("Authorization", &format!("Basic {LONG_TOKEN}"))],
    )
    .expect_error(401, "invalid_token");
}

/// `endorm serve` that is expected to refuse to start: its stderr. (Should it start, standard
/// input is closed at once, which stops it, and the assertion fails.)
fn serve_refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let socket = scratch.path().join("s.sock");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_endorm"))
        .args([
            "serve",
            "--exit-on-eof",
            "--socket",
            socket.to_str().unwrap(),
        ])
        .args(["--model", support::model_path().to_str().unwrap()])
        .args(args)
        .env("XDG_CONFIG_HOME", scratch.path())
        .env("XDG_RUNTIME_DIR", scratch.path())
        .env_remove("ENDORM_TOKEN")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run endorm serve");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "it started: {stderr}");
    stderr
}

#[test]
fn tokens_shorter_than_128_bits_are_refused_at_start() {
    let listen = format!("127.0.0.1:{}", free_port());
    let short = &LONG_TOKEN[..31];
    for (args, env) in [
        (vec!["--listen", listen.as_str(), "--token", short], vec![]),
        (
            vec!["--listen", listen.as_str()],
            vec![("ENDORM_TOKEN", short)],
        ),
        (
            vec!["--listen", listen.as_str(), "--token", "s3cret"],
            vec![],
        ),
        (
            vec![
                "--listen",
                listen.as_str(),
                "--token",
                "0123456789abcdef 0123456789abcdef",
            ],
            vec![],
        ),
    ] {
        let stderr = serve_refused(&args, &env);
        assert!(stderr.contains("at least 32"), "{args:?} {env:?}: {stderr}");
    }
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let file = scratch.path().join("token");
    std::fs::write(&file, format!("{short}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let stderr = serve_refused(
        &["--listen", &listen, "--token-file", file.to_str().unwrap()],
        &[],
    );
    assert!(stderr.contains("at least 32"), "{stderr}");
    assert!(stderr.contains(file.to_str().unwrap()), "{stderr}");
}

#[test]
fn a_token_file_keeps_the_token_out_of_the_command_line() {
    use std::os::unix::fs::PermissionsExt as _;
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let file = scratch.path().join("private/token");
    let address = format!("127.0.0.1:{}", free_port());
    // Missing: created 0600 with a random token, in a directory created 0700.
    let daemon = Daemon::start(
        &model_section("m"),
        &["--listen", &address, "--token-file", file.to_str().unwrap()],
    );
    let token = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert_eq!(token.len(), 64);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(file.parent().unwrap()), 0o700);
    let auth = format!("Bearer {token}");
    assert_eq!(
        tcp_get(&address, "/health", &[("Authorization", &auth)]).status,
        200
    );
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", daemon.child.id())).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&cmdline).contains(&token));
    assert!(
        !plain(&daemon.log_text()).contains("visible"),
        "{}",
        daemon.log_text()
    );
    drop(daemon);

    // Present: its token is used.
    std::fs::write(&file, format!("{LONG_TOKEN}\n")).unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let _daemon = Daemon::start(
        &model_section("m"),
        &["--listen", &address, "--token-file", file.to_str().unwrap()],
    );
    let auth = format!("Bearer {LONG_TOKEN}");
    assert_eq!(
        tcp_get(&address, "/health", &[("Authorization", &auth)]).status,
        200
    );
}

#[test]
fn a_token_on_the_command_line_is_warned_about() {
    let address = format!("127.0.0.1:{}", free_port());
    let daemon = Daemon::start(
        &model_section("m"),
        &["--listen", &address, "--token", LONG_TOKEN],
    );
    let log = plain(&daemon.log_text());
    assert!(
        log.contains("--token") && log.contains("visible to other users"),
        "{log}"
    );
}

#[test]
fn the_socket_directory_is_made_private_or_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // endorm's own directory, left 0755 by an earlier tool: made 0700.
    let own = scratch.path().join("endorm");
    std::fs::create_dir(&own).unwrap();
    std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = own.join("endorm.sock");
    let mut daemon = Daemon::spawn(&model_section("m"), &["--socket", socket.to_str().unwrap()]);
    daemon.socket = socket.clone();
    daemon.wait_ready();
    assert_eq!(mode(&own), 0o700);
    assert_eq!(mode(&socket), 0o600);
    drop(daemon);

    // A shared directory others can write to (like /tmp): refused, and the message says what to do.
    let shared = scratch.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("other.txt"), "").unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_endorm"))
        .args(["serve", "--exit-on-eof", "--socket"])
        .arg(shared.join("endorm.sock"))
        .args(["--model", support::model_path().to_str().unwrap()])
        .env("XDG_CONFIG_HOME", scratch.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("1777") && stderr.contains("--socket") && stderr.contains("0700"),
        "{stderr}"
    );
    assert_eq!(mode(&shared), 0o1777);
}

/// The `OMP_WAIT_POLICY` a running `endorm serve` has, started with `policy` in its environment
/// (`None`: unset).
fn openmp_policy_of_a_daemon(policy: Option<&str>) -> String {
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let config = scratch.path().join("config.toml");
    std::fs::write(&config, model_section("m")).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_endorm"));
    command
        .arg("serve")
        .arg("--socket")
        .arg(scratch.path().join("s.sock"))
        .arg("--config")
        .arg(&config)
        .arg("--exit-on-eof")
        .env_remove("OMP_WAIT_POLICY")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    if let Some(policy) = policy {
        command.env("OMP_WAIT_POLICY", policy);
    }
    let mut child = command.spawn().unwrap();
    // The re-exec keeps the pid: the process the test started is the one that serves.
    let environ = format!("/proc/{}/environ", child.id());
    let started = Instant::now();
    let found = loop {
        let text = std::fs::read(&environ).unwrap_or_default();
        let found = text
            .split(|&b| b == 0)
            .filter_map(|v| v.strip_prefix(b"OMP_WAIT_POLICY="))
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .next();
        if found.is_some() || started.elapsed() > Duration::from_secs(20) {
            break found.unwrap_or_default();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(child.stdin.take());
    let _ = child.wait();
    found
}

#[test]
fn openmp_threads_sleep_while_they_wait_unless_the_user_chose_otherwise() {
    assert_eq!(openmp_policy_of_a_daemon(None), "PASSIVE");
    assert_eq!(openmp_policy_of_a_daemon(Some("ACTIVE")), "ACTIVE");
}
