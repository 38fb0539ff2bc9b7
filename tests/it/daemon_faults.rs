//! The daemon against unlucky and hostile clients (docs/RELIABILITY.md), each test with its own
//! `endorm serve`, short and bounded: slow heads and bodies, idle and excess connections,
//! protocol-level rejections, SIGTERM with more work than the grace period allows, a client that
//! leaves mid-request, kill -9 then restart, and a small request behind a big one.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{long_text, model_section, Daemon};

fn metric_or_zero(daemon: &Daemon, name: &str) -> f64 {
    let text = daemon.get("/metrics").text();
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

fn with_server(server: &str) -> String {
    format!("[server]\n{server}\n\n{}", model_section("m"))
}

/// A connection to the daemon that gives up reading after 10 s.
fn connect(daemon: &Daemon) -> UnixStream {
    let stream = UnixStream::connect(&daemon.socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Reads until the daemon closes; `Err` when it has not closed within the read timeout.
fn read_to_close(stream: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map(|_| raw)
}

/// Status and body of one raw response.
fn parse(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    (status, body)
}

fn error_code(body: &str) -> String {
    let body: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    body["error"]["code"].as_str().expect("code").to_owned()
}

#[test]
fn a_half_sent_head_is_closed_after_the_header_timeout() {
    let daemon = Daemon::start(&with_server("header_timeout_secs = 1"), &[]);
    let mut stream = connect(&daemon);
    stream.write_all(b"POST /v1/score HTTP/1.1\r\nHo").unwrap();
    let started = Instant::now();
    read_to_close(&mut stream).expect("the daemon closes the connection");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(daemon.get("/health").status, 200);
}

#[test]
fn a_trickling_body_is_answered_408() {
    let daemon = Daemon::start(&with_server("body_timeout_secs = 1"), &[]);
    let mut stream = connect(&daemon);
    stream
        .write_all(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"pro")
        .unwrap();
    let raw = read_to_close(&mut stream).expect("an answer within the read timeout");
    let (status, body) = parse(&raw);
    assert_eq!(status, 408, "{body}");
    assert_eq!(error_code(&body), "body_timeout");
    // The rest of that body is no request: the daemon says it closes the connection.
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
}

#[test]
fn an_idle_kept_alive_connection_is_closed() {
    let daemon = Daemon::start(&with_server("idle_timeout_secs = 1"), &[]);
    let mut stream = connect(&daemon);
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let raw = read_to_close(&mut stream).expect("closed when idle");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(parse(&raw).0, 200);
}

#[test]
fn connections_over_max_connections_get_503_and_the_daemon_recovers() {
    let daemon = Daemon::start(&with_server("max_connections = 2"), &[]);
    // Two kept-alive connections, each answered once, hold both slots (the readiness checks'
    // connections may take a moment to close: retry a refused one).
    let held: Vec<UnixStream> = (0..2)
        .map(|_| {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let mut stream = connect(&daemon);
                stream
                    .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                    .unwrap();
                let mut head = [0u8; 12];
                stream.read_exact(&mut head).unwrap();
                if head.ends_with(b"200") {
                    break stream;
                }
                assert!(Instant::now() < deadline, "no free slot");
                std::thread::sleep(Duration::from_millis(200));
            }
        })
        .collect();
    let mut extra = connect(&daemon);
    extra
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (status, body) = parse(&read_to_close(&mut extra).expect("an answer"));
    assert_eq!(status, 503, "{body}");
    assert_eq!(error_code(&body), "too_many_connections");
    drop(held);
    daemon.wait_for("a free connection slot", |d| {
        d.try_get("/health").is_some_and(|r| r.status == 200)
    });
}

#[test]
fn protocol_rejections_answer_the_json_error_body() {
    let daemon = Daemon::start(&with_server("max_body_bytes = 1000"), &[]);
    let send = |request: &[u8]| {
        let mut stream = connect(&daemon);
        stream.write_all(request).unwrap();
        parse(&read_to_close(&mut stream).expect("an answer before the body"))
    };
    // A declared length over max_body_bytes: 413 before any of the body is sent.
    let (status, body) = send(
        b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000000\r\n\r\n",
    );
    assert_eq!(status, 413, "{body}");
    assert_eq!(error_code(&body), "body_too_large");
    // A request target over 8 KiB: 414.
    let long = format!(
        "GET /health?{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(9000)
    );
    let (status, body) = send(long.as_bytes());
    assert_eq!(status, 414, "{body}");
    assert_eq!(error_code(&body), "uri_too_long");
    // Headers over 32 KiB: 431.
    let big = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(40_000)
    );
    let (status, body) = send(big.as_bytes());
    assert_eq!(status, 431, "{body}");
    assert_eq!(error_code(&body), "headers_too_large");
    // A bad chunk size: 400 from the body reader.
    let (status, body) = send(
        b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_code(&body), "invalid_body");
    // Heads hyper refuses before the router sees them get the JSON body too: two different
    // Content-Length headers, a malformed request line, more than 100 headers.
    let (status, body) = send(
        b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_code(&body), "malformed_request");
    let (status, body) = send(b"GET /health HTTP/1.1 extra\r\nHost: x\r\n\r\n");
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_code(&body), "malformed_request");
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (status, body) = send(format!("GET /health HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes());
    assert_eq!(status, 431, "{body}");
    assert_eq!(error_code(&body), "headers_too_large");
    assert_eq!(daemon.get("/health").status, 200);
}

#[test]
fn sigterm_with_more_queued_than_the_grace_period_allows_answers_503() {
    let mut daemon = Daemon::start(&with_server("shutdown_grace_secs = 1"), &[]);
    let socket = daemon.socket.clone();
    // Completions run one job per prompt (never batched together): the queue stays long.
    let prompts: Vec<String> = (0..2).map(|_| long_text(400)).collect();
    let body = json!({"prompt": prompts, "echo": true, "max_tokens": 0, "logprobs": 0}).to_string();
    let (body, shared) = (&body, &daemon);
    let responses: Vec<_> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..6)
            .map(|_| {
                scope.spawn(move || {
                    shared.try_request("POST", "/v1/completions", Some(body.as_bytes()))
                })
            })
            .collect();
        shared.wait_for("requests queued", |d| {
            metric_or_zero(d, "endorm_queue_waiting{model=\"m\"}") >= 3.0
        });
        shared.terminate();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let mut refused = 0;
    for response in &responses {
        let response = response
            .as_ref()
            .expect("every request gets an HTTP answer");
        match response.status {
            200 => {}
            503 => {
                response.expect_error(503, "shutting_down");
                assert_eq!(response.header("retry-after"), Some("1"));
                refused += 1;
            }
            other => panic!("status {other}: {}", response.text()),
        }
    }
    assert!(refused >= 1, "{responses:?}");
    let status = daemon.wait_exit(30);
    assert!(
        !status.success(),
        "the exit code says not everything finished"
    );
    assert!(!socket.exists(), "the socket is removed");
    assert!(daemon.log_text().contains("grace period over"));
}

#[test]
fn a_half_sent_head_does_not_hold_shutdown() {
    let mut daemon = Daemon::start(&with_server("shutdown_grace_secs = 600"), &[]);
    let mut stream = connect(&daemon);
    stream.write_all(b"POST /v1/score HTTP/1.1\r\nHo").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    daemon.terminate();
    let status = daemon.wait_exit(30);
    assert!(status.success(), "log:\n{}", daemon.log_text());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(daemon
        .log_text()
        .contains("every request in flight finished"));
}

#[test]
fn a_client_that_leaves_mid_request_is_logged_and_counted_499() {
    let daemon = Daemon::start(&model_section("m"), &[]);
    // A big completions request, then its client leaves while it runs.
    let prompts: Vec<String> = (0..6).map(|_| long_text(300)).collect();
    let body = json!({"prompt": prompts, "echo": true, "max_tokens": 0, "logprobs": 0}).to_string();
    {
        let mut stream = connect(&daemon);
        write!(
            stream,
            "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        daemon.wait_for("the request to run", |d| {
            metric_or_zero(d, "endorm_queue_running{model=\"m\"}") >= 1.0
        });
    }
    daemon.wait_for("the abandoned request to be counted", |d| {
        metric_or_zero(
            d,
            "endorm_requests_total{route=\"/v1/completions\",status=\"499\"}",
        ) == 1.0
    });
    assert!(daemon.log_text().contains("request abandoned"));
    // Its remaining prompts are not run: the worker is soon idle, and the daemon healthy.
    daemon.wait_for("the worker to be idle", |d| {
        metric_or_zero(d, "endorm_queue_running{model=\"m\"}") == 0.0
    });
    let small = json!({"prompt": "Hi", "echo": true, "max_tokens": 0, "logprobs": 0});
    assert_eq!(daemon.post("/v1/completions", &small).status, 200);
}

#[test]
fn a_small_request_behind_a_big_one_finishes_first() {
    let daemon = Daemon::start(&model_section("m"), &[]);
    let prompts: Vec<String> = (0..4).map(|_| long_text(200)).collect();
    let big = json!({"prompt": prompts, "echo": true, "max_tokens": 0, "logprobs": 0});
    let small = json!({"prompt": "Hi", "echo": true, "max_tokens": 0, "logprobs": 0});
    let (sender, order) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        let big_sender = sender.clone();
        let (big, daemon) = (&big, &daemon);
        scope.spawn(move || {
            let status = daemon.post("/v1/completions", big).status;
            big_sender.send(("big", status)).unwrap();
        });
        daemon.wait_for("the big request to run", |d| {
            metric_or_zero(d, "endorm_queue_running{model=\"m\"}") >= 1.0
        });
        let status = daemon.post("/v1/completions", &small).status;
        sender.send(("small", status)).unwrap();
    });
    drop(sender);
    let order: Vec<_> = order.iter().collect();
    assert_eq!(order, [("small", 200), ("big", 200)]);
}

#[test]
fn kill_9_then_restart_reclaims_the_socket() {
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let socket = scratch.path().join("s.sock");
    let socket_arg = socket.to_str().unwrap();
    let mut first = Daemon::spawn(&model_section("m"), &["--socket", socket_arg]);
    first.socket = socket.clone();
    first.wait_ready();
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(socket.exists(), "kill -9 leaves the socket file");
    let mut second = Daemon::spawn(&model_section("m"), &["--socket", socket_arg]);
    second.socket = socket.clone();
    second.wait_ready();
    // A third one never steals the socket from the live second.
    let mut third = Daemon::spawn(&model_section("m"), &["--socket", socket_arg]);
    let status = third.wait_exit(30);
    assert!(!status.success());
    assert!(
        third.log_text().contains("already serving"),
        "{}",
        third.log_text()
    );
    assert_eq!(second.get("/health").status, 200);
}

/// Sends a `/v1/score` of `body`, disconnects once it runs, and waits for the job to be stopped.
fn leave_while_it_runs(daemon: &Daemon, body: &str) {
    {
        let mut stream = connect(daemon);
        write!(
            stream,
            "POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        daemon.wait_for("the request to run", |d| {
            metric_or_zero(d, "endorm_queue_running{model=\"m\"}") >= 1.0
        });
    }
    daemon.wait_for("the running job to be stopped", |d| {
        metric_or_zero(d, "endorm_jobs_cancelled_total") >= 1.0
    });
}

#[test]
fn a_client_that_leaves_stops_its_running_score_between_candidate_groups() {
    let daemon = Daemon::start(&model_section("m"), &[]);
    // 48 candidates: three groups of max_sequences = 16 after one long context.
    let candidates: Vec<String> = (0..48)
        .map(|i| format!(" answer {i}: {}", long_text(30)))
        .collect();
    let body =
        json!({"format": "raw", "prompt": long_text(450), "candidates": candidates}).to_string();
    leave_while_it_runs(&daemon, &body);
    assert!(daemon.log_text().contains("client gone while its job ran"));
    assert_eq!(
        metric_or_zero(
            &daemon,
            "endorm_requests_total{route=\"/v1/score\",status=\"499\"}"
        ),
        1.0
    );
    let small = json!({"prompt": "Hi", "candidates": ["Hello!"]});
    assert_eq!(daemon.post("/v1/score", &small).status, 200);
}

#[test]
fn a_client_that_leaves_stops_its_long_contexts_decode_between_slices() {
    let daemon = Daemon::start(&model_section("m"), &[]);
    // One candidate: the job has one group, so it can only stop between the slices of its
    // ~1,900-token context (four of n_batch = 512).
    let body =
        json!({"format": "raw", "prompt": long_text(650), "candidates": [" w1"]}).to_string();
    leave_while_it_runs(&daemon, &body);
    assert!(daemon.log_text().contains("client gone while its job ran"));
    let small = json!({"prompt": "Hi", "candidates": ["Hello!"]});
    assert_eq!(daemon.post("/v1/score", &small).status, 200);
}
