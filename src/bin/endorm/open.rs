//! `endorm open`: prints the address of the lens (the daemon's page, docs/SERVER.md) with the TCP
//! token in its fragment, as Jupyter hands out its URL, and opens it in a browser where there is
//! one. The daemon writes the address beside its socket while it serves the page on TCP.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Args;

use endorm::config::Config;
use endorm::paths;
use endorm::server::socket;

/// `endorm open`.
#[derive(Args)]
#[command(after_help = "Examples:\n  endorm open\n  endorm open --no-browser")]
pub struct OpenArgs {
    /// The daemon's socket [default: $ENDORM_SOCKET, else the config's, else
    /// $XDG_RUNTIME_DIR/endorm/endorm.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Config file, for its `[server] socket` [default: `endorm config path`].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the address only: open no browser.
    #[arg(long)]
    no_browser: bool,
}

/// Prints the lens's address and opens it.
pub fn run(args: OpenArgs) -> Result<ExitCode> {
    let configured = match &args.config {
        Some(path) => Config::load(path)?.server.socket,
        None => paths::config_file()
            .filter(|path| path.exists())
            .and_then(|path| Config::load(&path).ok())
            .and_then(|config| config.server.socket),
    };
    let socket_path = paths::socket(args.socket.as_deref(), configured.as_deref())
        .context("no runtime directory for the socket: pass --socket PATH")?;
    let url = read_url(&socket_path)?;
    check_listening(&url, &socket_path)?;
    println!("{url}");
    if !args.no_browser {
        match open_in_browser(&socket_path, &url) {
            Ok(browser) => eprintln!("opened in a browser ({browser})"),
            Err(why) => eprintln!("no browser opened ({why}): open the address above"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The address the daemon on `socket_path` wrote, from a file only this user can read.
fn read_url(socket_path: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt as _;
    let file = paths::lens_url_file(socket_path);
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => bail!(
            "no daemon on {} serves the lens: start one with `endorm serve --listen \
             127.0.0.1:8765` (the page is on TCP, unless [server] web = false), or name its \
             socket with --socket",
            socket_path.display()
        ),
        Err(e) => bail!("cannot read {}: {e}", file.display()),
    };
    let mode = std::fs::metadata(&file)?.mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "{} is mode {mode:o}: other users could have written it, so it is not opened",
            file.display()
        );
    }
    let url = text.trim();
    if !url.starts_with("http://") {
        bail!("{} holds no http:// address", file.display());
    }
    Ok(url.to_owned())
}

/// Fails when nothing listens at the address (the daemon was killed and left its file).
fn check_listening(url: &str, socket_path: &Path) -> Result<()> {
    let host = url
        .trim_start_matches("http://")
        .split(['/', '#'])
        .next()
        .unwrap_or_default();
    let addresses: Vec<SocketAddr> = host
        .to_socket_addrs()
        .with_context(|| format!("not an address: {host}"))?
        .collect();
    let listening = addresses
        .iter()
        .any(|address| TcpStream::connect_timeout(address, Duration::from_secs(2)).is_ok());
    if !listening {
        bail!(
            "nothing listens at {host}, where the daemon on {} served the lens: it has stopped \
             (start it again with `endorm serve --listen {host}`)",
            socket_path.display()
        );
    }
    Ok(())
}

/// Hands the browser a page that forwards to `url`: the token is then in no command line (other
/// users can read a browser's in `ps`). `$BROWSER` first, then `open` on macOS, `xdg-open` in a
/// graphical session elsewhere. Returns the command used, or why there is none.
fn open_in_browser(socket_path: &Path, url: &str) -> Result<String, String> {
    let (program, mut arguments) = browser()?;
    let page = paths::lens_open_file(socket_path);
    let escaped = html_escape(url);
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <meta http-equiv=\"refresh\" content=\"0;url={escaped}\"><title>endorm lens</title></head>\
         <body><p><a href=\"{escaped}\">Open the endorm lens</a></p></body></html>\n"
    );
    socket::write_private(&page, &html)
        .map_err(|e| format!("cannot write {}: {e}", page.display()))?;
    let target = file_url(&page);
    match arguments.iter_mut().find(|a| a.contains("%s")) {
        Some(argument) => *argument = argument.replace("%s", &target),
        None => arguments.push(target),
    }
    let mut child = Command::new(&program)
        .args(&arguments)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    // `xdg-open` and `open` return at once; a browser named in $BROWSER may run on.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        match child.try_wait() {
            Ok(Some(status)) if !status.success() => {
                return Err(format!("{program} failed: {status}"))
            }
            Ok(Some(_)) => break,
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("{program}: {e}")),
        }
    }
    Ok(program)
}

/// The command that opens a URL here, and its arguments before the URL.
fn browser() -> Result<(String, Vec<String>), String> {
    if let Some(first) = std::env::var("BROWSER").ok().and_then(|list| {
        list.split(':')
            .map(str::trim)
            .find(|b| !b.is_empty())
            .map(str::to_owned)
    }) {
        let mut words = first.split_whitespace().map(str::to_owned);
        let program = words.next().unwrap_or_default();
        return Ok((program, words.collect()));
    }
    if cfg!(target_os = "macos") {
        return Ok(("open".into(), Vec::new()));
    }
    let graphical = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
    if !graphical {
        return Err("no graphical session: neither DISPLAY nor WAYLAND_DISPLAY is set".into());
    }
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("xdg-open").is_file()));
    if !on_path {
        return Err("no xdg-open on PATH".into());
    }
    Ok(("xdg-open".into(), Vec::new()))
}

fn html_escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '&' => "&amp;".to_owned(),
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

/// `file://` and the absolute path, each byte other than RFC 3986's unreserved ones and `/`
/// written `%XX`.
fn file_url(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let encoded: String = absolute
        .as_os_str()
        .as_bytes()
        .iter()
        .map(|&b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("file://{encoded}")
}
