//! The daemon's configuration as a user meets it, each test with the real `endorm` binary: the
//! per-model flags of `serve`, `$ENDORM_SOCKET`, hot reload on a fresh install, and what
//! `config check` and `config show` say.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{model_section, Daemon};

/// A scratch directory under the target directory.
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir")
}

/// `endorm ARGS` with `$XDG_CONFIG_HOME` in `home` and without `$ENDORM_SOCKET`.
fn endorm(args: &[&str], home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_endorm"))
        .args(args)
        .env("XDG_CONFIG_HOME", home)
        .env_remove("ENDORM_SOCKET")
        .output()
        .expect("run endorm")
}

/// A daemon started by hand (no `--socket` unless `args` has one), stopped when dropped.
struct Bare {
    child: Child,
    log: PathBuf,
}

impl Bare {
    fn start(args: &[&str], env: &[(&str, &Path)], dir: &Path) -> Bare {
        let log = dir.join("daemon.log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_endorm"));
        command
            .arg("serve")
            .args(args)
            .arg("--exit-on-eof")
            .env_remove("ENDORM_SOCKET")
            .env("RUST_LOG", "warn,endorm=info")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        for (name, value) in env {
            command.env(name, value);
        }
        Bare {
            child: command.spawn().expect("start endorm serve"),
            log,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `ready` every 50 ms for up to 60 s.
    fn wait_for(&mut self, what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if ready() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the daemon exited ({status}); log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "timed out waiting for {what}; daemon log:\n{}",
            self.log_text()
        );
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `path` on `socket`, or `None` when nothing answers there.
fn get(socket: &Path, path: &str) -> Option<Value> {
    let stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    let response = support::exchange(stream, "GET", path, None, &[]).ok()?;
    Some(response.json())
}

/// The ids `/v1/models` lists, whatever their state.
fn model_ids(socket: &Path) -> Vec<String> {
    get(socket, "/v1/models").map_or_else(Vec::new, |models| {
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    })
}

#[test]
fn serve_takes_the_per_model_flags_over_the_config() {
    // The config says n_ctx = 2048 and n_threads = 2; the command line wins.
    let daemon = Daemon::start(
        &model_section("m"),
        &["--n-ctx", "1024", "--threads", "1", "--n-batch", "256"],
    );
    let n_ctx = |d: &Daemon, id: &str| {
        d.get("/v1/models").json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .map(|m| m["meta"]["n_ctx"].clone())
    };
    assert_eq!(n_ctx(&daemon, "m"), Some(1024.into()));
    assert!(
        daemon.log_text().contains("n_threads=1"),
        "{}",
        daemon.log_text()
    );
    // The flags outlive a reload, and reach a model added by it.
    daemon.write_config(&format!("{}\n{}", model_section("m"), model_section("n")));
    daemon.wait_for("model n to load", |d| {
        n_ctx(d, "n").is_some_and(|n| !n.is_null())
    });
    assert_eq!(n_ctx(&daemon, "n"), Some(1024.into()));
    assert_eq!(n_ctx(&daemon, "m"), Some(1024.into()));

    // A flag that contradicts the config is refused at start, naming both keys.
    let dir = scratch();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[defaults]\ncache_slots = 4\n").unwrap();
    let refused = endorm(
        &[
            "serve",
            "--socket",
            dir.path().join("s.sock").to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--n-batch",
            "5",
        ],
        dir.path(),
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    for part in ["n_batch = 5", "cache_slots", "command line"] {
        assert!(stderr.contains(part), "{part} missing in {stderr}");
    }
}

/// GPU layers asked of a build without a GPU backend: served from the CPU, said once, not
/// claimed (llama.cpp's own log says the layers were offloaded). device:: covers a GPU build.
#[cfg(not(any(feature = "cuda", feature = "metal", feature = "vulkan")))]
#[test]
fn gpu_layers_without_a_gpu_backend_serve_from_the_cpu_with_one_warning() {
    let daemon = Daemon::start(&model_section("m"), &["--n-gpu-layers", "99"]);
    let meta = daemon.get("/v1/models").json()["data"][0]["meta"].clone();
    assert_eq!(
        (&meta["device"], &meta["gpu_layers"], &meta["kv_cache"]),
        (&Value::from("CPU"), &Value::from(0), &Value::from("CPU")),
        "{meta}"
    );
    let log = daemon.log_text();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("every layer runs on the CPU"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("WARN") && warnings[0].contains("--features cuda, metal or vulkan"),
        "{log}"
    );
    assert!(log.contains("placement=31/31 layers on CPU"), "{log}");
}

#[test]
fn the_socket_is_the_flag_then_endorm_socket_then_the_config() {
    let dir = scratch();
    let (flag, env, configured) = (
        dir.path().join("flag.sock"),
        dir.path().join("env.sock"),
        dir.path().join("config.sock"),
    );
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nsocket = {:?}\n{}",
            configured.display().to_string(),
            model_section("m")
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();

    let mut daemon = Bare::start(
        &["--config", config],
        &[("ENDORM_SOCKET", &env)],
        dir.path(),
    );
    daemon.wait_for("the daemon on $ENDORM_SOCKET", || {
        get(&env, "/health").is_some()
    });
    assert!(
        !configured.exists(),
        "$ENDORM_SOCKET comes before the config"
    );
    drop(daemon);

    let flag_arg = flag.to_str().unwrap();
    let mut daemon = Bare::start(
        &["--config", config, "--socket", flag_arg],
        &[("ENDORM_SOCKET", &env)],
        dir.path(),
    );
    daemon.wait_for("the daemon on --socket", || get(&flag, "/health").is_some());
    assert!(get(&env, "/health").is_none(), "--socket comes first");
    drop(daemon);

    let mut daemon = Bare::start(&["--config", config], &[], dir.path());
    daemon.wait_for("the daemon on the config's socket", || {
        get(&configured, "/health").is_some()
    });
}

#[test]
fn hot_reload_picks_up_a_config_whose_directory_did_not_exist_at_start() {
    let dir = scratch();
    // A fresh install: not even $XDG_CONFIG_HOME exists.
    let home = dir.path().join("config-home");
    let config = home.join("endorm").join("config.toml");
    let socket = dir.path().join("s.sock");
    // The real model under another name (a daemon with no model it can load stops at once).
    let first = dir.path().join("first.gguf");
    std::os::unix::fs::symlink(support::model_path(), &first).unwrap();
    let mut daemon = Bare::start(
        &[
            "--socket",
            socket.to_str().unwrap(),
            "--model",
            first.to_str().unwrap(),
            "--threads",
            "2",
        ],
        &[("XDG_CONFIG_HOME", &home)],
        dir.path(),
    );
    daemon.wait_for("the daemon", || get(&socket, "/health").is_some());
    assert_eq!(model_ids(&socket), ["first"]);

    // `mkdir -p` and a new file, as a user would write their first config.
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        "[models.second]\npath = \"/nonexistent/second.gguf\"\n",
    )
    .unwrap();
    daemon.wait_for("the new config to be applied", || {
        model_ids(&socket) == ["first", "second"]
    });
    // From then on the file's own directory is watched.
    std::fs::write(
        &config,
        "[models.third]\npath = \"/nonexistent/third.gguf\"\n",
    )
    .unwrap();
    daemon.wait_for("the changed config to be applied", || {
        model_ids(&socket) == ["first", "third"]
    });
    let health = get(&socket, "/health").unwrap();
    assert!(health.get("config_error").is_none(), "{health}");
}

#[test]
fn config_check_refuses_settings_that_contradict_each_other() {
    let dir = scratch();
    for (text, parts) in [
        (
            format!("{}batching = true\ncache_slots = 4\n", model_section("m")),
            &[
                "[models.m]",
                "batching = true",
                "cache_slots = 4",
                "cache_slots = 0",
            ][..],
        ),
        (
            format!("[defaults]\ncache_slots = 8\n\n{}", model_section("m"))
                .replace("n_batch = 512", "n_batch = 8"),
            &["[models.m]", "n_batch = 8", "cache_slots + 1 = 9"][..],
        ),
        (
            format!("{}n_ctxx = 5\n", model_section("m")),
            &["`n_ctxx`"][..],
        ),
    ] {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, &text).unwrap();
        let check = endorm(
            &["config", "check", "--config", file.to_str().unwrap()],
            dir.path(),
        );
        assert!(!check.status.success(), "accepted:\n{text}");
        let stderr = String::from_utf8_lossy(&check.stderr);
        for part in parts {
            assert!(stderr.contains(part), "{part} missing in {stderr}");
        }
    }
}

#[test]
fn config_show_prints_every_default_it_fills_in() {
    let dir = scratch();
    let show = endorm(&["config", "show"], dir.path());
    assert!(
        show.status.success(),
        "{}",
        String::from_utf8_lossy(&show.stderr)
    );
    let shown = String::from_utf8_lossy(&show.stdout);
    let defaults = shown
        .split("[defaults]\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no [defaults] in\n{shown}"))
        .split("\n[")
        .next()
        .unwrap();
    for part in [
        "n_batch = 512",
        "n_gpu_layers = 0",
        "max_sequences = 64",
        "cache_slots = 0",
        "cache_tokens = 4096",
        "batching = false",
        "# n_ctx: unset, so the model's trained context, at most 4096",
        "# n_threads: unset, so one per core",
    ] {
        assert!(defaults.contains(part), "{part} missing in\n{shown}");
    }
    assert!(shown.contains("# socket: unset"), "{shown}");
}

/// `reference_model`: the same model loaded twice under two ids contrasts to exactly 0, from a
/// request or from the config; a reference with another chat template renders other tokens (400),
/// and an unknown one is 404.
#[test]
fn reference_model_subtracts_the_same_tokens_on_another_model() {
    let template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n\
                    {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    let config = format!(
        "{}{}reference_model = \"amateur\"\n{}chat_template = {template:?}\n",
        model_section("amateur"),
        model_section("expert"),
        model_section("other-template"),
    );
    let daemon = Daemon::start(&config, &[]);
    let body = |extra: Value| {
        let mut body = serde_json::json!({"model": "expert",
            "prompt": "What is the capital of France?", "candidates": ["Paris.", "London."],
            "aggregate": "endo_mean"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    // From the config (expert's entry), and named by a request (amateur against itself).
    for request in [
        body(serde_json::json!({})),
        body(serde_json::json!({"model": "amateur", "reference_model": "amateur"})),
    ] {
        let response = daemon.ok("/v1/score", &request);
        assert_eq!(response["reference_model"], "amateur", "{response}");
        for result in response["results"].as_array().unwrap() {
            assert_eq!(result["reference"], result["endo_mean"], "{result}");
            assert_eq!(result["score"], 0.0, "{result}");
        }
    }
    let message = daemon
        .post(
            "/v1/score",
            &body(serde_json::json!({"reference_model": "other-template"})),
        )
        .expect_error(400, "invalid_request");
    assert!(
        message.contains("tokenizes this request differently"),
        "{message}"
    );
    daemon
        .post(
            "/v1/score",
            &body(serde_json::json!({"reference_model": "gpt-9"})),
        )
        .expect_error(404, "model_not_found");
    // Without a reference, nothing is subtracted.
    let plain = daemon.ok("/v1/score", &body(serde_json::json!({"model": "amateur"})));
    assert!(plain.get("reference_model").is_none(), "{plain}");
    assert!(plain["results"][0].get("reference").is_none(), "{plain}");
}
