//! The Unix socket (and the TCP token file): default locations, permissions, stale sockets and a
//! second instance.

use std::io::{ErrorKind, Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use super::ServerError;

/// Longest socket path the OS takes (`sun_path` less its terminating NUL).
#[cfg(target_os = "macos")]
pub const MAX_SOCKET_PATH: usize = 103;
/// Longest socket path the OS takes (`sun_path` less its terminating NUL).
#[cfg(not(target_os = "macos"))]
pub const MAX_SOCKET_PATH: usize = 107;

/// The per-user runtime directory of endorm: `$XDG_RUNTIME_DIR/endorm`, else the `directories`
/// per-user location (the cache directory where the OS has no runtime directory).
pub fn runtime_dir() -> Option<PathBuf> {
    let project = directories::ProjectDirs::from("", "", "endorm")?;
    Some(
        project
            .runtime_dir()
            .map_or_else(|| project.cache_dir().to_owned(), Path::to_owned),
    )
}

/// `<runtime dir>/endorm.sock`.
pub fn default_socket() -> Option<PathBuf> {
    runtime_dir().map(|dir| dir.join("endorm.sock"))
}

/// `<runtime dir>/token`.
pub fn default_token_file() -> Option<PathBuf> {
    runtime_dir().map(|dir| dir.join("token"))
}

/// Binds the socket at `path`: its directory is created 0700 if missing, a stale socket file is
/// replaced, a live one (another daemon answers) is refused, and the socket is made 0600.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener, ServerError> {
    let length = path.as_os_str().len();
    if length > MAX_SOCKET_PATH {
        return Err(ServerError::Socket {
            path: path.to_owned(),
            reason: format!(
                "the path is {length} bytes long and this OS takes at most {MAX_SOCKET_PATH}: choose a \
                 shorter one with --socket"
            ),
        });
    }
    let fail = |reason: String| ServerError::Socket {
        path: path.to_owned(),
        reason,
    };
    create_private_parent(path).map_err(|e| fail(format!("cannot create its directory: {e}")))?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt as _;
            if !meta.file_type().is_socket() {
                return Err(fail(
                    "a file that is not a socket is in the way; remove it or choose another path"
                        .into(),
                ));
            }
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(ServerError::AlreadyRunning {
                        path: path.to_owned(),
                    });
                }
                Err(e)
                    if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::NotFound) =>
                {
                    tracing::info!(path = %path.display(), "replacing a stale socket");
                    std::fs::remove_file(path)
                        .map_err(|e| fail(format!("cannot remove the stale socket: {e}")))?;
                }
                Err(e) => {
                    return Err(fail(format!(
                        "cannot tell whether another daemon uses it: {e}"
                    )))
                }
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e.to_string())),
    }
    let listener =
        tokio::net::UnixListener::bind(path).map_err(|e| fail(format!("cannot bind: {e}")))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| fail(format!("cannot make it private (0600): {e}")))?;
    Ok(listener)
}

/// The fewest characters a TCP bearer token may have: 128 bits written in hex.
pub const MIN_TOKEN_CHARS: usize = 32;

/// Checks a TCP bearer token: at least [`MIN_TOKEN_CHARS`] characters, all printable ASCII
/// without spaces (what an `Authorization` header carries). The error says how to make one.
pub fn check_token(token: &str) -> Result<(), String> {
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "the TCP token must be printable ASCII without spaces, at least {MIN_TOKEN_CHARS} \
             characters long (e.g. `openssl rand -hex 32`)"
        ));
    }
    if token.len() < MIN_TOKEN_CHARS {
        return Err(format!(
            "the TCP token is {} characters long; it needs at least {MIN_TOKEN_CHARS} (128 bits as \
             hex): make one with `openssl rand -hex 32`, or leave the token out to have one \
             created in the token file",
            token.len()
        ));
    }
    Ok(())
}

/// The TCP bearer token: read from `path`, or, when the file is missing or empty, a new random one
/// written there (0600, its directory 0700). A token in the file that [`check_token`] refuses is an
/// error.
pub fn token_from_file(path: &Path) -> Result<String, ServerError> {
    let fail = |reason: String| ServerError::Token {
        path: path.to_owned(),
        reason,
    };
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => {
            let token = text.trim();
            check_token(token).map_err(fail)?;
            return Ok(token.to_owned());
        }
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e.to_string())),
    }
    let token = random_token().map_err(|e| fail(format!("cannot read /dev/urandom: {e}")))?;
    create_private_parent(path).map_err(|e| fail(format!("cannot create its directory: {e}")))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| fail(e.to_string()))?;
    writeln!(file, "{token}").map_err(|e| fail(e.to_string()))?;
    Ok(token)
}

/// 32 random bytes from the OS, as hex.
/// Creates the directory `path` lives in, readable by this user only (0700), if it is missing.
fn create_private_parent(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir),
        None => Ok(()),
    }
}

fn random_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_paths_are_refused_with_the_limit() {
        let long = PathBuf::from(format!("/tmp/{}.sock", "x".repeat(120)));
        let error = bind(&long).unwrap_err().to_string();
        assert!(error.contains(&MAX_SOCKET_PATH.to_string()), "{error}");
    }

    #[test]
    fn short_or_spaced_tokens_are_refused() {
        assert!(check_token(&"a".repeat(32)).is_ok());
        let short = check_token(&"a".repeat(31)).unwrap_err();
        assert!(
            short.contains("31 characters") && short.contains("at least 32"),
            "{short}"
        );
        assert!(check_token("").is_err());
        assert!(check_token(&format!("{} {}", "a".repeat(16), "b".repeat(16))).is_err());
        assert!(check_token(&"é".repeat(20)).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let error = token_from_file(&path).unwrap_err().to_string();
        assert!(error.contains("at least 32"), "{error}");
    }

    #[test]
    fn tokens_are_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/token");
        let token = token_from_file(&path).unwrap();
        assert_eq!(token.len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(token_from_file(&path).unwrap(), token);
    }
}
