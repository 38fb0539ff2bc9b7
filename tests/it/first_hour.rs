//! What a newcomer meets in the first hour (issue 26), each through the real binary: the paths
//! scripts need (`config path --socket`), a daemon with nothing it can load, the first
//! `[models.X]` of a config, a model without a chat template, pipes into and out of
//! `endorm score`, what `bench` says while it runs, the log at its default level, the small
//! messages (`--listen 8765`, the 401, `config check` without a file), and the shell completions.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{self, model_section, Daemon};

fn endorm() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_endorm"));
    command.env_remove("ENDORM_SOCKET").env_remove("RUST_LOG");
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir")
}

/// A model directory holding the default model (a link to the tests' copy).
fn model_dir_with_the_default_model() -> tempfile::TempDir {
    let dir = scratch();
    std::os::unix::fs::symlink(
        support::model_path(),
        dir.path().join(endorm::paths::DEFAULT_MODEL_FILE),
    )
    .unwrap();
    dir
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
fn config_path_prints_the_socket_and_token_file_alone_for_scripts() {
    let dir = scratch();
    let home = dir.path().join("config-home");
    let one_line = |args: &[&str], env: &[(&str, &Path)], unset: &[&str]| {
        let mut command = endorm();
        command.args(args).env("XDG_CONFIG_HOME", &home);
        for name in unset {
            command.env_remove(name);
        }
        let output = command.envs(env.iter().copied()).output().unwrap();
        assert!(output.status.success(), "{}", text(&output.stderr));
        assert_eq!(text(&output.stderr), "", "nothing but the path");
        let stdout = text(&output.stdout);
        assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
        PathBuf::from(stdout.trim_end())
    };
    let runtime = dir.path().join("run");
    let socket = ["config", "path", "--socket"];
    let token = ["config", "path", "--token"];
    // With a runtime directory, without one (most containers, root shells), and as named.
    let xdg = [("XDG_RUNTIME_DIR", runtime.as_path())];
    assert_eq!(
        one_line(&socket, &xdg, &[]),
        runtime.join("endorm/endorm.sock")
    );
    assert_eq!(one_line(&token, &xdg, &[]), runtime.join("endorm/token"));
    let home_dir = dir.path().join("home");
    let bare = [("HOME", home_dir.as_path())];
    let unset = ["XDG_RUNTIME_DIR", "XDG_CACHE_HOME"];
    assert_eq!(
        one_line(&socket, &bare, &unset),
        home_dir.join(".cache/endorm/endorm.sock")
    );
    assert_eq!(
        one_line(&token, &bare, &unset),
        home_dir.join(".cache/endorm/token")
    );
    let named = dir.path().join("env.sock");
    let env = [("ENDORM_SOCKET", named.as_path()), xdg[0]];
    assert_eq!(one_line(&socket, &env, &[]), named);
    // The config's, when it names them.
    std::fs::create_dir_all(home.join("endorm")).unwrap();
    std::fs::write(
        home.join("endorm/config.toml"),
        "[server]\nsocket = \"/srv/e.sock\"\ntoken_file = \"/srv/token\"\n",
    )
    .unwrap();
    assert_eq!(one_line(&socket, &xdg, &[]), Path::new("/srv/e.sock"));
    assert_eq!(one_line(&token, &xdg, &[]), Path::new("/srv/token"));
}

#[test]
fn config_check_without_a_config_file_says_so() {
    let dir = scratch();
    let models = model_dir_with_the_default_model();
    let check = |model_dir: &Path| {
        endorm()
            .args(["config", "check"])
            .env("XDG_CONFIG_HOME", dir.path())
            .env("ENDORM_MODEL_DIR", model_dir)
            .output()
            .unwrap()
    };
    let ok = check(models.path());
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let stdout = text(&ok.stdout);
    assert!(stdout.starts_with("no config file at "), "{stdout}");
    assert!(stdout.contains("the defaults apply"), "{stdout}");
    let empty = scratch();
    let missing = check(empty.path());
    assert!(!missing.status.success());
    let stderr = text(&missing.stderr);
    assert!(
        stderr.contains("no config file at ") && stderr.contains("`endorm pull` installs it"),
        "{stderr}"
    );
}

#[test]
fn serve_with_no_model_it_can_load_exits_with_the_fix() {
    // The default model not installed, no config: the one model cannot load.
    let empty = scratch();
    let dir_env = empty.path().to_str().unwrap();
    let mut daemon = Daemon::spawn_env("", &[], &[("ENDORM_MODEL_DIR", dir_env)]);
    let status = daemon.wait_exit(60);
    let log = plain(&daemon.log_text());
    assert!(!status.success(), "{log}");
    assert!(log.contains("no model could be loaded"), "{log}");
    assert!(
        log.contains("`endorm pull` installs smollm2-135m-instruct"),
        "{log}"
    );
    assert!(log.contains("`endorm serve --model PATH`"), "{log}");
    assert_eq!(
        log.matches("no model could be loaded").count(),
        1,
        "said once: {log}"
    );
    assert!(!daemon.socket.exists());

    // A catalogue name that is not installed names its own pull.
    let mut named = Daemon::spawn_env(
        "",
        &["--model", "qwen2.5-coder-0.5b"],
        &[("ENDORM_MODEL_DIR", dir_env)],
    );
    assert!(!named.wait_exit(60).success());
    let log = plain(&named.log_text());
    assert!(
        log.contains("`endorm pull qwen2.5-coder-0.5b` installs"),
        "{log}"
    );
}

#[test]
fn the_first_models_entry_replaces_the_default_model_without_a_gap() {
    let models = model_dir_with_the_default_model();
    let daemon = Daemon::spawn_env(
        "",
        &["--threads", "2"],
        &[("ENDORM_MODEL_DIR", models.path().to_str().unwrap())],
    );
    daemon.wait_ready();
    let log = plain(&daemon.log_text());
    // "loading" comes between "listening" and "ready".
    let at = |what: &str| {
        log.find(what)
            .unwrap_or_else(|| panic!("no {what:?} in\n{log}"))
    };
    assert!(at("listening") < at("loading model"), "{log}");
    assert!(at("loading model") < at("model ready"), "{log}");
    let ids = |d: &Daemon| -> Vec<String> {
        d.get("/v1/models").json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                format!(
                    "{}:{}",
                    m["id"].as_str().unwrap(),
                    m["state"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(ids(&daemon), ["smollm2-135m-instruct:ready"]);

    let stop = std::sync::atomic::AtomicBool::new(false);
    let request = json!({"prompt": "What is 2+2?", "candidates": ["4", "5"]});
    std::thread::scope(|scope| {
        let background = scope.spawn(|| {
            let mut answers = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let response = daemon.post("/v1/score", &request);
                answers.push((response.status, response.json()["model"].clone()));
            }
            answers
        });
        // Requests without `model` keep being answered, by the old model until the new one is
        // ready (not 503 "loading", not 404).
        std::thread::sleep(Duration::from_millis(300));
        daemon.write_config(&model_section("x"));
        daemon.wait_for("x to replace the default model", |d| ids(d) == ["x:ready"]);
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let answers = background.join().unwrap();
        assert!(
            answers.iter().all(|(status, _)| *status == 200),
            "{answers:?}"
        );
        // The old model, then the new one, never back.
        let models: Vec<&str> = answers.iter().map(|(_, m)| m.as_str().unwrap()).collect();
        let switch = models
            .iter()
            .position(|m| *m == "x")
            .unwrap_or(models.len());
        assert!(switch > 0, "{models:?}");
        assert!(models[switch..].iter().all(|m| *m == "x"), "{models:?}");
    });
    assert_eq!(daemon.ok("/v1/score", &request)["model"], "x");
    assert_eq!(daemon.get("/health").json()["status"], "ok");
}

#[test]
fn a_model_without_a_chat_template_is_scored_raw_and_says_so() {
    let config = format!(
        "[server]\ndefault_model = \"base\"\n\n{}\n{}chat_template = \"\"\n",
        model_section("chat"),
        model_section("base")
    );
    let daemon = Daemon::start(&config, &[]);
    let score = |model: &str| {
        daemon.ok(
            "/v1/score",
            &json!({"model": model, "prompt": "The capital of France is", "candidates": [" Paris.", " London."]}),
        )
    };
    assert_eq!(score("chat")["format"], "chat");
    let raw = score("base");
    assert_eq!(raw["format"], "raw");
    // The same as asking for raw.
    let asked = daemon.ok(
        "/v1/score",
        &json!({"model": "base", "format": "raw", "prompt": "The capital of France is", "candidates": [" Paris.", " London."]}),
    );
    assert_eq!(raw["results"], asked["results"]);

    for (model, format) in [("chat", "chat"), ("base", "raw")] {
        let rerank = daemon.ok(
            "/v1/rerank",
            &json!({"model": model, "query": "The capital of France?", "documents": ["Paris.", "London."]}),
        );
        assert_eq!(rerank["format"], format, "{rerank}");
    }
    // text-embeddings-inference's answer is a bare list: the header says it.
    let tei = daemon.post(
        "/rerank",
        &json!({"query": "The capital of France?", "texts": ["Paris.", "London."]}),
    );
    assert_eq!(tei.status, 200, "{}", tei.text());
    assert!(tei.json().is_array());
    assert_eq!(tei.header("x-endorm-format"), Some("raw"));
}

fn score_command(args: &[&str]) -> Command {
    let mut command = endorm();
    command
        .args([
            "score",
            "--quiet",
            "--threads",
            "2",
            "--n-ctx",
            "1024",
            "--model",
        ])
        .arg(support::model_path())
        .args(args);
    command
}

const LINES: &str = "{\"id\": \"a\", \"prompt\": \"What is 2+2?\", \"candidates\": [\"4\", \"5\"]}\n\
                     {\"id\": \"b\", \"format\": \"raw\", \"prompt\": \"Once upon a\", \"candidates\": [\" time\", \" banana\"]}\n";

fn ids(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].clone())
        .collect()
}

#[test]
fn score_reads_stdin_and_writes_stdout_for_pipes() {
    // `-i - -o -`.
    let mut child = score_command(&["-i", "-", "-o", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(LINES.as_bytes())
        .unwrap();
    let piped = child.wait_with_output().unwrap();
    assert!(piped.status.success(), "{}", text(&piped.stderr));
    assert_eq!(ids(&text(&piped.stdout)), [json!("a"), json!("b")]);

    // A file in, `/dev/stdout` out (a pipe here: no seek, no truncation).
    let dir = scratch();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, LINES).unwrap();
    let device = score_command(&["-i", input.to_str().unwrap(), "-o", "/dev/stdout"])
        .output()
        .unwrap();
    assert!(device.status.success(), "{}", text(&device.stderr));
    let results = |stdout: &[u8]| -> Vec<Value> {
        text(stdout)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["results"].clone())
            .collect()
    };
    assert_eq!(ids(&text(&device.stdout)), [json!("a"), json!("b")]);
    assert_eq!(results(&device.stdout), results(&piped.stdout));

    // --resume reads its output back: it needs a file.
    let resume = score_command(&["-i", input.to_str().unwrap(), "-o", "-", "--resume"])
        .output()
        .unwrap();
    assert!(!resume.status.success());
    assert!(
        text(&resume.stderr).contains("needs a regular file"),
        "{}",
        text(&resume.stderr)
    );

    // An input that is not there: said once.
    let missing = score_command(&["-i", "/nonexistent/in.jsonl", "-o", "-"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let stderr = text(&missing.stderr);
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/in.jsonl"), "{stderr}");
}

#[test]
fn bench_says_what_it_does_and_how_long_it_will_take() {
    let output = endorm()
        .args([
            "bench",
            "--threads",
            "2",
            "--context-tokens",
            "32",
            "--candidates",
            "2",
        ])
        .args(["--candidate-tokens", "8", "--repeats", "2", "--model"])
        .arg(support::model_path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    let first = stderr
        .find("bench: 48 tokens a request, 2 repeats")
        .unwrap_or_else(|| panic!("{stderr}"));
    let estimate = stderr
        .find("the warm-up took")
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(first < estimate && stderr.contains("s to go"), "{stderr}");
    assert!(text(&output.stdout).contains("shared vs naive"));
}

#[test]
fn rerank_names_each_column_once() {
    let output = endorm()
        .args(["rerank", "--threads", "2", "--model"])
        .arg(support::model_path())
        .args(["--prompt", "What is 2+2?", "4", "5"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let header: Vec<&str> = stdout.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["rank", "endo", "logprob", "tokens", "candidate"],
        "{stdout}"
    );
}

/// The Qwen2.5 code model of the catalogue, where installed (CI pulls it).
fn qwen() -> Option<PathBuf> {
    endorm::catalog::find("qwen2.5-coder-0.5b")
        .and_then(|entry| entry.path())
        .filter(|path| path.is_file())
}

#[test]
fn the_default_log_level_shows_no_vocabulary_warnings_or_health_polls() {
    // llama.cpp warns about Qwen2.5's vocabulary on every load: debug, not warn.
    let Some(qwen) = qwen() else {
        panic!("Qwen2.5-Coder-0.5B is missing: endorm pull qwen2.5-coder-0.5b");
    };
    let rerank = |extra: &[&str]| -> Output {
        endorm()
            .args(["rerank", "--threads", "2", "--n-ctx", "512", "--model"])
            .arg(&qwen)
            .args(extra)
            .args(["--prompt", "2+2?", "4", "5"])
            .output()
            .unwrap()
    };
    let quiet = rerank(&[]);
    assert!(quiet.status.success(), "{}", text(&quiet.stderr));
    assert_eq!(
        text(&quiet.stderr),
        "",
        "nothing on stderr at the default level"
    );
    let debug = rerank(&["--log-level", "llama-cpp-2=debug"]);
    let stderr = plain(&text(&debug.stderr));
    let line = stderr
        .lines()
        .find(|l| l.contains("control-looking token"))
        .unwrap_or_else(|| panic!("the warning is gone altogether:\n{stderr}"));
    assert!(line.contains("DEBUG"), "{line}");

    // The daemon's request log: every route but /health, which editors poll.
    let daemon = Daemon::start(&model_section("m"), &[]);
    for _ in 0..3 {
        assert_eq!(daemon.get("/health").status, 200);
    }
    daemon.ok(
        "/v1/score",
        &json!({"prompt": "Hi", "candidates": ["Hello"]}),
    );
    daemon.wait_for("the score's log line", |d| {
        plain(&d.log_text()).contains("route=\"/v1/score\"")
    });
    let log = plain(&daemon.log_text());
    assert!(!log.contains("route=\"/health\""), "{log}");
}

#[test]
fn small_messages_say_what_to_do() {
    // A port alone.
    let output = endorm()
        .args([
            "serve",
            "--listen",
            "8765",
            "--socket",
            "/nonexistent/x.sock",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("write 127.0.0.1:8765"),
        "{}",
        text(&output.stderr)
    );

    // The TCP 401 names the token file.
    let dir = scratch();
    let file = dir.path().join("token");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(
        &model_section("m"),
        &["--listen", &address, "--token-file", file.to_str().unwrap()],
    );
    let stream = std::net::TcpStream::connect(&address).unwrap();
    let refused = support::exchange(stream, "GET", "/health", None, &[]).unwrap();
    let message = refused.expect_error(401, "invalid_token");
    assert!(
        message.contains(&format!("the token file {}", file.display())),
        "{message}"
    );

    // X-Endorm-Client is visible ASCII: a name with a space is refused.
    let stream = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    let body = json!({"prompt": "Hi", "candidates": ["Hello"]}).to_string();
    let spaced = support::exchange(
        stream,
        "POST",
        "/v1/score",
        Some(body.as_bytes()),
        &[("X-Endorm-Client", "my editor")],
    )
    .unwrap();
    spaced.expect_error(400, "invalid_client");
}

#[test]
fn printing_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt as _;
    // `endorm pull --list | head -1`: the reader is gone before endorm writes.
    for args in [
        &["pull", "--list"][..],
        &["completions", "bash"],
        &["man"],
        &["config", "path"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = endorm()
            .args(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(text(&output.stderr), "", "{args:?}");
        assert_eq!(output.status.signal(), Some(13), "{args:?}: SIGPIPE");
    }
}

#[test]
fn completions_source_in_bash_and_the_man_page_renders() {
    let script = endorm().args(["completions", "bash"]).output().unwrap();
    assert!(script.status.success());
    let dir = scratch();
    let file = dir.path().join("endorm.bash");
    std::fs::write(&file, &script.stdout).unwrap();
    let sourced = Command::new("bash")
        .args([
            "-c",
            &format!("source {} && complete -p endorm", file.display()),
        ])
        .output()
        .unwrap();
    assert!(sourced.status.success(), "{}", text(&sourced.stderr));
    assert!(
        text(&sourced.stdout).contains("endorm"),
        "{}",
        text(&sourced.stdout)
    );
    for shell in ["zsh", "fish"] {
        let script = endorm().args(["completions", shell]).output().unwrap();
        assert!(
            script.status.success() && text(&script.stdout).contains("pull"),
            "{shell}"
        );
    }
    let man = endorm().args(["man", "pull"]).output().unwrap();
    assert!(man.status.success());
    let page = text(&man.stdout);
    assert!(page.contains(".TH endorm-pull 1"), "{page}");
    assert!(
        page.contains("endorm pull qwen2.5\\-coder\\-0.5b"),
        "the example is in the page: {page}"
    );
    let help = endorm().args(["score", "--help"]).output().unwrap();
    assert!(
        text(&help.stdout).contains("endorm score -i - -o -"),
        "{}",
        text(&help.stdout)
    );
    // Every command's --help (the list read from `endorm --help`) shows an example of it.
    let top = text(&endorm().arg("--help").output().unwrap().stdout);
    let commands: Vec<&str> = top
        .split("Commands:")
        .nth(1)
        .and_then(|rest| rest.split("Options:").next())
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .collect();
    assert!(commands.len() >= 10, "{top}");
    for command in commands {
        let help = text(&endorm().args([command, "--help"]).output().unwrap().stdout);
        let example = help
            .split_once("Example")
            .map(|(_, rest)| rest)
            .unwrap_or_else(|| panic!("no example in `endorm {command} --help`:\n{help}"));
        assert!(
            example.contains(&format!("endorm {command}")),
            "{command}: {help}"
        );
    }
}
