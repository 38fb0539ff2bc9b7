//! Fairness between clients on the real daemon: a client's backlog does not hold another client's
//! request behind all of it (clients told apart by `X-Endorm-Client`, or by their process on the
//! Unix socket), and a request whose one job is over `max_job_tokens` is refused before it is
//! queued. Orders of completion are compared, never times.

use std::process::Command;
use std::sync::mpsc;

use serde_json::{json, Value};

use crate::support::{exchange, long_text, model_section, Daemon, Response};

/// Requests the backlog client queues at once.
const BACKLOG: usize = 12;

/// A request that keeps the worker busy for a moment (a few hundred tokens of context).
fn slow() -> Value {
    json!({"format": "raw", "prompt": long_text(80), "candidates": [" one", " two"]})
}

fn small() -> Value {
    json!({"format": "raw", "prompt": "Hi", "candidates": [" there"]})
}

fn metric(daemon: &Daemon, name: &str) -> f64 {
    let text = daemon.get("/metrics").text();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// POSTs `body` to `/v1/score` on the daemon's socket with `headers`.
fn post_as(daemon: &Daemon, body: &Value, headers: &[(&str, &str)]) -> Response {
    let stream = std::os::unix::net::UnixStream::connect(&daemon.socket).expect("connect");
    let body = body.to_string();
    exchange(stream, "POST", "/v1/score", Some(body.as_bytes()), headers).expect("exchange")
}

/// Client A queues [`BACKLOG`] slow requests at once (each with `a_headers`, from this process);
/// once most of them wait, `second` sends one small request as another client. Returns where the
/// second client's answer came among all answers (0: first), and every status.
fn place_of_second_client(
    a_headers: &[(&str, &str)],
    second: impl FnOnce(&Daemon) -> u16,
) -> (usize, Vec<(&'static str, u16)>) {
    let daemon = Daemon::start(&model_section("m"), &[]);
    let waiting = |d: &Daemon| metric(d, "endorm_queue_waiting{model=\"m\"}");
    let (sender, order) = mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..BACKLOG {
            let (sender, daemon) = (sender.clone(), &daemon);
            scope.spawn(move || {
                let status = post_as(daemon, &slow(), a_headers).status;
                sender.send(("a", status)).unwrap();
            });
        }
        daemon.wait_for("most of the backlog to wait in the queue", |d| {
            waiting(d) >= (BACKLOG / 2) as f64
        });
        sender.send(("b", second(&daemon))).unwrap();
    });
    drop(sender);
    let order: Vec<_> = order.iter().collect();
    let place = order.iter().position(|(who, _)| *who == "b").unwrap();
    (place, order)
}

/// Round-robin: B's job runs after at most the one of A's running and the one whose turn is next.
fn assert_overtakes(place: usize, order: &[(&str, u16)]) {
    assert!(order.iter().all(|(_, status)| *status == 200), "{order:?}");
    assert_eq!(order.len(), BACKLOG + 1);
    assert!(
        place <= 3,
        "the second client's answer came at {place} of {}, behind most of the backlog (a FIFO \
         puts it last): {order:?}",
        order.len()
    );
}

#[test]
fn a_second_named_client_overtakes_the_backlog_of_the_first() {
    let (place, order) = place_of_second_client(&[("X-Endorm-Client", "batch")], |daemon| {
        post_as(daemon, &small(), &[("X-Endorm-Client", "editor")]).status
    });
    assert_overtakes(place, &order);
}

#[test]
fn another_process_on_the_socket_is_another_client() {
    // No header at all: the backlog is this test process (its 12 connections one client), the
    // small request comes from curl, a process of its own.
    let (place, order) = place_of_second_client(&[], |daemon| {
        let output = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--unix-socket",
            ])
            .arg(&daemon.socket)
            .args(["-H", "Content-Type: application/json", "-d"])
            .arg(small().to_string())
            .arg("http://localhost/v1/score")
            .output()
            .expect("curl (also used by the docs' examples test)");
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    });
    assert_overtakes(place, &order);
}

#[test]
fn a_job_over_max_job_tokens_is_413_and_changes_nothing() {
    let config = format!("[server]\nmax_job_tokens = 64\n\n{}", model_section("m"));
    let daemon = Daemon::start(&config, &[]);
    let before = daemon.ok("/v1/score", &small());
    let tokens = |d: &Daemon| metric(d, "endorm_tokens_total");
    let tokens_before = tokens(&daemon);
    let long = long_text(60);
    for (path, body) in [
        (
            "/v1/score",
            json!({"format": "raw", "prompt": long, "candidates": [" a"]}),
        ),
        (
            "/v1/completions",
            json!({"prompt": ["Hi", long], "echo": true, "max_tokens": 0, "logprobs": 0}),
        ),
        ("/get_reward", json!({"query": [long]})),
    ] {
        let response = daemon.post(path, &body);
        let message = response.expect_error(413, "job_too_large");
        assert!(message.contains("max_job_tokens = 64"), "{path}: {message}");
        let cost: usize = message
            .split("a job of ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{path}: no cost in {message}"));
        assert!(cost > 64, "{path}: {message}");
    }
    assert_eq!(tokens(&daemon), tokens_before, "a refused request ran");
    assert_eq!(metric(&daemon, "endorm_jobs_cancelled_total"), 0.0);
    // The bound is per job: prompts each under it pass however many there are.
    let prompts: Vec<String> = (0..4).map(|_| long_text(10)).collect();
    let per_item = json!({"prompt": prompts, "echo": true, "max_tokens": 0, "logprobs": 0});
    let answered = daemon.ok("/v1/completions", &per_item);
    assert!(answered["usage"]["prompt_tokens"].as_u64().unwrap() > 64);
    assert_eq!(
        daemon.ok("/v1/score", &small())["results"],
        before["results"]
    );
}

/// A `/v1/score` request of `groups` candidate groups (`max_sequences` = 16 in the tests' model
/// section) after a long context.
fn big(groups: usize) -> Value {
    let candidates: Vec<String> = (0..16 * groups)
        .map(|i| format!(" answer {i}: {}", long_text(12)))
        .collect();
    json!({"format": "raw", "prompt": long_text(100), "candidates": candidates})
}

fn scores(response: &Value) -> Vec<f64> {
    response["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["score"].as_f64().expect("a finite score"))
        .collect()
}

/// Client `batch` sends `big`; once it runs, client `editor` sends one small request. Returns the
/// order the two answers came in, with their statuses, and the big request's response.
fn small_while_big_runs(daemon: &Daemon, big: &Value) -> (Vec<(&'static str, u16)>, Response) {
    let (sender, order) = mpsc::channel();
    let interleaved = std::thread::scope(|scope| {
        let (big_sender, daemon, big) = (sender.clone(), daemon, big);
        let first = scope.spawn(move || {
            let response = post_as(daemon, big, &[("X-Endorm-Client", "batch")]);
            big_sender.send(("big", response.status)).unwrap();
            response
        });
        daemon.wait_for("the big request to run", |d| {
            metric(d, "endorm_queue_running{model=\"m\"}") >= 1.0
        });
        let status = post_as(daemon, &small(), &[("X-Endorm-Client", "editor")]).status;
        sender.send(("small", status)).unwrap();
        first.join().unwrap()
    });
    drop(sender);
    let order: Vec<_> = order.iter().collect();
    (order, interleaved)
}

#[test]
fn another_clients_request_runs_between_the_candidate_groups_of_a_big_one() {
    let daemon = Daemon::start(&model_section("m"), &[]);
    let big = big(4);
    let (order, interleaved) = small_while_big_runs(&daemon, &big);
    // Before jobs were split into passes, the big one ran to its end first.
    assert_eq!(order, [("small", 200), ("big", 200)]);
    // The pass in between emptied the cache (cache_slots = 0): the big request's context was
    // decoded again, the same way, so its scores are those of an uninterrupted run.
    let alone = daemon.ok("/v1/score", &big);
    let (with_break, without) = (scores(&interleaved.json()), scores(&alone));
    assert_eq!(with_break.len(), 64);
    for (a, b) in with_break.iter().zip(&without) {
        assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
    }
}

#[test]
fn a_full_queue_still_takes_the_request_of_a_client_with_none_queued() {
    let config = format!("[server]\nqueue_depth = 2\n\n{}", model_section("m"));
    let daemon = Daemon::start(&config, &[]);
    let batch = [("X-Endorm-Client", "batch")];
    // Step by step, so that the queue is full, not merely was: a long job runs (64 candidates,
    // seconds), then two more of the batch client fill the queue's two places.
    let statuses = std::thread::scope(|scope| {
        let daemon = &daemon;
        let running = scope.spawn(move || post_as(daemon, &big(4), &batch).status);
        daemon.wait_for("the long batch request to run", |d| {
            metric(d, "endorm_queue_running{model=\"m\"}") >= 1.0
        });
        let queued: Vec<_> = (0..2)
            .map(|_| scope.spawn(move || post_as(daemon, &slow(), &batch).status))
            .collect();
        daemon.wait_for("the batch client to fill the queue", |d| {
            metric(d, "endorm_queue_waiting{model=\"m\"}") >= 2.0
        });
        // The batch client itself still meets the capacity ...
        let over = post_as(daemon, &small(), &batch).status;
        // ... but before room was kept for clients with nothing queued, this was 503 queue_full.
        let editor = post_as(daemon, &small(), &[("X-Endorm-Client", "editor")]).status;
        let mut statuses = vec![running.join().unwrap()];
        statuses.extend(queued.into_iter().map(|h| h.join().unwrap()));
        statuses.extend([over, editor]);
        statuses
    });
    assert_eq!(statuses, [200, 200, 200, 503, 200]);
}

#[test]
fn another_clients_request_runs_between_the_slices_of_a_long_contexts_decode() {
    // The layout-invariant KV cache, so that the values can be compared bit for bit (with the
    // default f16 one they move within llama.cpp's layout noise: README, "Numerics").
    let config = format!(
        "{}type_k = \"q8_0\"\ntype_v = \"q8_0\"\n",
        model_section("m")
    );
    let daemon = Daemon::start(&config, &[]);
    // ~1,900 tokens of context (four slices of n_batch = 512) and one candidate: one group, so
    // before the slices the small request waited for the whole context.
    let big = json!({"format": "raw", "prompt": long_text(650), "candidates": [" w1 w2"]});
    let (order, interleaved) = small_while_big_runs(&daemon, &big);
    assert_eq!(order, [("small", 200), ("big", 200)]);
    // The slices end where one decode of the context would split it, and the small request's
    // tokens went to cells of their own: the values are those of an uninterrupted run.
    let alone = daemon.ok("/v1/score", &big);
    assert_eq!(scores(&interleaved.json()), scores(&alone));
}
