//! Shared by the daemon tests: start the real `endorm` binary on a temp socket, and a minimal
//! HTTP/1.1 client over a Unix socket (or TCP) that shows exactly what the daemon sent.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use crate::common::model_path;

/// A config serving the default model as `id` with the tests' small context and two threads.
pub fn model_section(id: &str) -> String {
    format!(
        "[models.{id}]\npath = {:?}\nn_ctx = 2048\nn_batch = 512\nn_threads = 2\nmax_sequences = 16\n",
        model_path().display().to_string()
    )
}

/// One HTTP response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the status and an OpenAI-shaped error body with `code`; returns the message.
    pub fn expect_error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "body: {}", self.text());
        let body = self.json();
        assert_eq!(body["error"]["code"], code, "body: {body}");
        assert!(body["error"]["type"].is_string(), "body: {body}");
        body["error"]["message"]
            .as_str()
            .expect("message")
            .to_owned()
    }
}

/// Sends one request on `stream` (Connection: close) and reads the whole response.
pub fn exchange<S: Read + Write>(
    mut stream: S,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if let Some(body) = body {
        // A daemon that refuses a large body early may close before reading all of it.
        let _ = stream.write_all(body);
    }
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    Ok(parse(&raw))
}

fn parse(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..line_end]).trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
    out
}

/// A running daemon in a temp directory; killed when dropped.
pub struct Daemon {
    /// The daemon process.
    pub child: Child,
    /// Its socket.
    pub socket: PathBuf,
    /// Its config file.
    pub config: PathBuf,
    /// Its log (stderr).
    pub log: PathBuf,
    /// The temp directory holding all of it (removed when dropped).
    pub dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `endorm serve` with `config` as its config file and `extra` arguments, and waits
    /// until every model is ready.
    pub fn start(config: &str, extra: &[&str]) -> Daemon {
        let daemon = Daemon::spawn(config, extra);
        daemon.wait_ready();
        daemon
    }

    /// Starts `endorm serve` without waiting.
    pub fn spawn(config: &str, extra: &[&str]) -> Daemon {
        Daemon::spawn_env(config, extra, &[])
    }

    /// Starts `endorm serve` with the environment variables `env` set, without waiting.
    pub fn spawn_env(config: &str, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("daemon")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("temp dir");
        let socket = dir.path().join("endorm.sock");
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).expect("write config");
        let log = dir.path().join("daemon.log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_endorm"));
        command.arg("serve");
        if !extra.contains(&"--socket") {
            command.arg("--socket").arg(&socket);
        }
        let child = command
            .arg("--config")
            .arg(&config_path)
            .args(extra)
            .arg("--exit-on-eof")
            .env("RUST_LOG", "warn,endorm=info")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start endorm serve");
        Daemon {
            child,
            socket,
            config: config_path,
            log,
            dir,
        }
    }

    /// Waits until `/health` says ok.
    pub fn wait_ready(&self) {
        self.wait_for("all models ready", |d| {
            d.try_get("/health")
                .is_some_and(|r| r.status == 200 && r.json()["status"] == "ok")
        });
    }

    /// Polls `ready` every 50 ms for up to 60 s.
    pub fn wait_for(&self, what: &str, mut ready: impl FnMut(&Daemon) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if ready(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "timed out waiting for {what}; daemon log:\n{}",
            self.log_text()
        );
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A request on the socket; `None` when the socket does not answer.
    pub fn try_request(&self, method: &str, path: &str, body: Option<&[u8]>) -> Option<Response> {
        let stream = UnixStream::connect(&self.socket).ok()?;
        exchange(stream, method, path, body, &[]).ok()
    }

    /// GET `path`, or `None` when nothing answers.
    pub fn try_get(&self, path: &str) -> Option<Response> {
        self.try_request("GET", path, None)
    }

    /// GET `path`.
    pub fn get(&self, path: &str) -> Response {
        self.try_get(path)
            .unwrap_or_else(|| panic!("GET {path}: no answer; log:\n{}", self.log_text()))
    }

    /// POST a JSON value.
    pub fn post(&self, path: &str, body: &Value) -> Response {
        self.post_raw(path, body.to_string().as_bytes())
    }

    /// POST raw bytes.
    pub fn post_raw(&self, path: &str, body: &[u8]) -> Response {
        self.try_request("POST", path, Some(body))
            .unwrap_or_else(|| panic!("POST {path}: no answer; log:\n{}", self.log_text()))
    }

    /// POST and expect 200; returns the JSON body.
    pub fn ok(&self, path: &str, body: &Value) -> Value {
        let response = self.post(path, body);
        assert_eq!(
            response.status,
            200,
            "POST {path} {body}: {}",
            response.text()
        );
        response.json()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit (up to `secs`).
    pub fn wait_exit(&mut self, secs: u64) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Replaces the config file (as an editor that writes in place).
    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).expect("write config");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw-format context of roughly `words` tokens.
pub fn long_text(words: usize) -> String {
    (0..words).map(|i| format!("w{} ", i % 97)).collect()
}

/// A copy of the GGUF at `source` in `dir` with every value of the F32 tensor `name` set to NaN
/// (a damaged model file whose logits come out NaN). Reads just enough of GGUF to find the tensor:
/// the header, the metadata (for `general.alignment`) and the tensor descriptions.
pub fn poisoned_gguf(source: &std::path::Path, dir: &std::path::Path, name: &str) -> PathBuf {
    let bytes = std::fs::read(source).expect("read the model");
    let mut at = 4 + 4;
    let u32_at = |at: &mut usize| {
        let v = u32::from_le_bytes(bytes[*at..*at + 4].try_into().unwrap());
        *at += 4;
        v
    };
    let u64_at = |at: &mut usize| {
        let v = u64::from_le_bytes(bytes[*at..*at + 8].try_into().unwrap());
        *at += 8;
        v
    };
    let string_at = |at: &mut usize| {
        let len = u64_at(at) as usize;
        let s = String::from_utf8_lossy(&bytes[*at..*at + len]).into_owned();
        *at += len;
        s
    };
    // Sizes of GGUF's scalar value types; 8 is a string, 9 an array.
    fn scalar(kind: u32) -> usize {
        match kind {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            other => panic!("GGUF value type {other} is not a scalar"),
        }
    }
    let tensors = u64_at(&mut at);
    let kvs = u64_at(&mut at);
    let mut alignment = 32u64;
    for _ in 0..kvs {
        let key = string_at(&mut at);
        let kind = u32_at(&mut at);
        match kind {
            8 => {
                string_at(&mut at);
            }
            9 => {
                let item = u32_at(&mut at);
                let count = u64_at(&mut at);
                for _ in 0..count {
                    if item == 8 {
                        string_at(&mut at);
                    } else {
                        at += scalar(item);
                    }
                }
            }
            4 if key == "general.alignment" => alignment = u64::from(u32_at(&mut at)),
            kind => at += scalar(kind),
        }
    }
    let mut found = None;
    for _ in 0..tensors {
        let tensor = string_at(&mut at);
        let dims = u32_at(&mut at);
        let elements: u64 = (0..dims).map(|_| u64_at(&mut at)).product();
        let kind = u32_at(&mut at);
        let offset = u64_at(&mut at);
        if tensor == name {
            assert_eq!(kind, 0, "{name} is not F32");
            found = Some((offset, elements));
        }
    }
    let (offset, elements) = found.unwrap_or_else(|| panic!("no tensor {name}"));
    let data = (at as u64).div_ceil(alignment) * alignment;
    let mut poisoned = bytes.clone();
    let start = (data + offset) as usize;
    for i in 0..elements as usize {
        poisoned[start + 4 * i..start + 4 * i + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    }
    let path = dir.join("poisoned.gguf");
    std::fs::write(&path, poisoned).expect("write the poisoned model");
    path
}
