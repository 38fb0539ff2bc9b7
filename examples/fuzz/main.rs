//! The long fuzz run (docs/RELIABILITY.md, "Fuzzing").
//!
//! In process, over every route's decoding and the engine's preparation with the real tokenizer
//! and chat template (no decoding):
//!
//!     cargo run --release --example fuzz -- --execs 10000000 [--seed 1] [--model PATH]
//!
//! Black-box, against a running daemon on a Unix socket (bodies from the same generator on every
//! route, for N requests or S seconds; no 5xx but 503 with Retry-After, the daemon keeps answering, and a control request's
//! scores never change):
//!
//!     cargo run --release --example fuzz -- --socket PATH --requests 20000 [--max-seconds S]
//!
//! Exits 1 on any finding, printing each body.

#[path = "harness.rs"]
mod harness;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use endorm::engine::{Model, ModelOptions};
use harness::{case, Rng};

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut execs, mut seed, mut model, mut socket, mut requests) =
        (1_000_000u64, 1u64, None, None, 10_000u64);
    let mut max_seconds = f64::INFINITY;
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--execs" => execs = value().parse().expect("--execs N"),
            "--seed" => seed = value().parse().expect("--seed N"),
            "--model" => model = Some(PathBuf::from(value())),
            "--socket" => socket = Some(PathBuf::from(value())),
            "--requests" => requests = value().parse().expect("--requests N"),
            "--max-seconds" => max_seconds = value().parse().expect("--max-seconds S"),
            other => panic!("unknown argument {other}"),
        }
    }
    let failed = match socket {
        Some(socket) => http(&socket, seed, requests, max_seconds),
        None => in_process(model, seed, execs),
    };
    std::process::exit(i32::from(failed));
}

fn default_model() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME");
    PathBuf::from(home).join(".cache/endorm/models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn in_process(model: Option<PathBuf>, seed: u64, execs: u64) -> bool {
    let path = model.unwrap_or_else(default_model);
    let model = Model::load(&path, &ModelOptions::default()).expect("load the model");
    // A finding's panic is caught and reported; its default message would only repeat it.
    std::panic::set_hook(Box::new(|_| {}));
    let started = Instant::now();
    let (tally, findings) = harness::run(&model, seed, execs, |n, tally| {
        let secs = started.elapsed().as_secs_f64();
        eprintln!("{n} execs, {:.0}/s, {tally:?}", n as f64 / secs);
    });
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{execs} execs in {secs:.1} s ({:.0}/s), seed {seed}: {tally:?}, {} findings",
        execs as f64 / secs,
        findings.len()
    );
    for finding in findings.iter().take(20) {
        println!(
            "FINDING {} {}: {}",
            finding.route.path(),
            finding.what,
            String::from_utf8_lossy(&finding.body)
        );
    }
    !findings.is_empty()
}

struct Reply {
    status: u16,
    retry_after: bool,
    body: String,
}

fn send(socket: &PathBuf, path: &str, body: &[u8]) -> std::io::Result<Reply> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: \
         application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let retry_after = head.to_ascii_lowercase().contains("\r\nretry-after:");
    Ok(Reply {
        status,
        retry_after,
        body: body.to_owned(),
    })
}

const CONTROL: &[u8] =
    br#"{"messages":[{"role":"user","content":"What is 2+2?"}],"candidates":["4","5","four"]}"#;

fn scores(reply: &Reply) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(&reply.body).ok()?;
    let results = value["results"].as_array()?;
    Some(
        results
            .iter()
            .map(|r| r["score"].to_string())
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn http(socket: &PathBuf, seed: u64, requests: u64, max_seconds: f64) -> bool {
    let control = send(socket, "/v1/score", CONTROL).expect("control request");
    let expected = scores(&control).unwrap_or_else(|| panic!("control: {}", control.body));
    let mut rng = Rng::new(seed);
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    let mut findings = 0;
    let started = Instant::now();
    let mut sent = 0;
    for n in 0..requests {
        let last = n + 1 == requests || started.elapsed().as_secs_f64() > max_seconds;
        let (route, body) = case(&mut rng);
        sent += 1;
        let problem = match send(socket, route.path(), &body) {
            Err(e) => Some(format!("no response: {e}")),
            Ok(reply) => {
                *statuses.entry(reply.status).or_default() += 1;
                match reply.status {
                    200..=499 => None,
                    503 if reply.retry_after => None,
                    status => Some(format!("status {status}: {}", reply.body)),
                }
            }
        };
        if let Some(problem) = problem {
            findings += 1;
            println!(
                "FINDING {} {problem}: {}",
                route.path(),
                String::from_utf8_lossy(&body)
            );
        }
        if (n + 1) % 100 == 0 || last {
            let control = send(socket, "/v1/score", CONTROL);
            match control.as_ref().ok().and_then(scores) {
                Some(now) if now == expected => {}
                other => {
                    findings += 1;
                    println!("FINDING control scores changed: {other:?} != {expected}");
                }
            }
            eprintln!(
                "{} requests, {:.1}/s, {statuses:?}",
                n + 1,
                (n + 1) as f64 / started.elapsed().as_secs_f64()
            );
        }
        if last {
            break;
        }
    }
    println!(
        "{sent} requests in {:.1} s, seed {seed}: statuses {statuses:?}, {findings} findings",
        started.elapsed().as_secs_f64()
    );
    findings > 0
}
