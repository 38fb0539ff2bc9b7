//! The Unix socket (and the TCP token file): binding, permissions, stale sockets and a second
//! instance. Their default locations are in [`crate::paths`].

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

/// Binds the socket at `path`: its directory is made private (see [`private_socket_dir`]), a stale
/// socket file is replaced, a live one (another daemon answers) is refused, and the socket file
/// never exists with a mode wider than 0600 (see [`bind_private`]).
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
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| fail("the path names no file".into()))?;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail(format!("cannot create its directory: {e}")))?;
    }
    // A directory of our own beside the socket: where it is bound, and whose owner is this user.
    let detour = Detour::create(dir).map_err(|e| {
        fail(format!(
            "cannot create a private directory in {}: {e}",
            dir.display()
        ))
    })?;
    private_socket_dir(dir, name, &detour).map_err(fail)?;
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
    let listener = bind_private(path, &detour)?;
    listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixListener::from_std(listener))
        .map_err(|e| fail(format!("cannot listen: {e}")))
}

/// Which file a socket path names (device and inode), so that a stopping daemon removes its own
/// socket and not one another daemon bound there since (a user removed the file and started a
/// second daemon on the path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    dev: u64,
    ino: u64,
}

impl Identity {
    /// The file at `path` now, if there is one.
    pub fn of(path: &Path) -> Option<Identity> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::symlink_metadata(path).ok()?;
        Some(Identity {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// Removes the socket at `path` if it is still the one this daemon bound (`ours`): a socket
/// another daemon bound there since is left alone.
pub fn remove_if_ours(path: &Path, ours: Option<Identity>) {
    let now = Identity::of(path);
    if now.is_none() {
        return;
    }
    if now != ours {
        tracing::warn!(path = %path.display(), "the socket path holds another daemon's socket now: left in place");
        return;
    }
    if let Err(error) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), %error, "cannot remove the socket");
    }
}

/// Binds the socket in `detour` (0700, so nobody else can reach it), makes it 0600 there, then
/// hard-links it to `path`: the socket appears at `path` already 0600, and an entry that another
/// process put at `path` meanwhile is never replaced.
///
/// Race-free, unlike setting the umask around `bind`: the umask is per process, so another
/// thread creating a file, or binding, at the same time would get (or restore) the wrong one.
fn bind_private(
    path: &Path,
    detour: &Detour,
) -> Result<std::os::unix::net::UnixListener, ServerError> {
    let fail = |reason: String| ServerError::Socket {
        path: path.to_owned(),
        reason,
    };
    let inside = detour.dir.join("s");
    if inside.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(fail(format!(
            "endorm binds it first as {} ({} bytes) and this OS takes at most {MAX_SOCKET_PATH}: \
             choose a shorter path with --socket",
            inside.display(),
            inside.as_os_str().len()
        )));
    }
    let listener = std::os::unix::net::UnixListener::bind(&inside)
        .map_err(|e| fail(format!("cannot bind: {e}")))?;
    std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| fail(format!("cannot make it private (0600): {e}")))?;
    match std::fs::hard_link(&inside, path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            return Err(fail(
                "another process created it while endorm was starting; try again".into(),
            ))
        }
        // A file system without hard links: rename, which would replace an entry made meanwhile.
        Err(_) => std::fs::rename(&inside, path)
            .map_err(|e| fail(format!("cannot move it into place: {e}")))?,
    }
    Ok(listener)
}

/// A private (0700) directory made beside the socket for the time of the bind; removed on drop.
struct Detour {
    dir: PathBuf,
    owner: u32,
}

impl Detour {
    fn create(parent: &Path) -> std::io::Result<Detour> {
        use std::os::unix::fs::MetadataExt as _;
        let pid = std::process::id();
        let mut attempt = 0u32;
        loop {
            let dir = parent.join(format!(".e{pid:x}{attempt:x}"));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {
                    let owner = std::fs::metadata(&dir)?.uid();
                    return Ok(Detour { dir, owner });
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists && attempt < 64 => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for Detour {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join("s"));
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Makes the socket's directory `dir` private (0700) where that is safe, or refuses it.
///
/// * Private already (no permission for group or others): nothing to do.
/// * Ours and endorm's own (named `endorm`, or holding nothing but the socket and the token
///   file): made 0700, as when endorm creates it.
/// * Writable by group or others and not endorm's own (a shared directory such as `/tmp`, or
///   another user's): refused, since someone else could replace the socket; the message says
///   how to choose a directory of its own. Such a directory is never chmod-ed: it is shared.
/// * Only readable by others and not endorm's own (a home directory, or `/run` for root): left
///   as it is with a warning; the socket itself is 0600, so others can see it but not connect.
fn private_socket_dir(dir: &Path, name: &std::ffi::OsStr, detour: &Detour) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(dir)
        .map_err(|e| format!("cannot read its directory {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let ours = meta.uid() == detour.owner;
    let own_dir = ours && is_endorms_own(dir, name, detour);
    let elsewhere = format!(
        "pass --socket PATH in a directory of its own, e.g. --socket {}, which endorm creates 0700",
        dir.join("endorm").join(name).display()
    );
    if own_dir {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
            format!(
                "its directory {} is mode {mode:o} and cannot be made 0700: {e}",
                dir.display()
            )
        })?;
        tracing::info!(dir = %dir.display(), was = format_args!("{mode:o}"), "made the socket's directory private (0700)");
        return Ok(());
    }
    if mode & 0o022 != 0 {
        let whose = if ours {
            "holds other files, so endorm does not change its mode".to_owned()
        } else {
            format!("belongs to another user (uid {})", meta.uid())
        };
        return Err(format!(
            "its directory {} is mode {mode:o}: other users can write to it and replace the socket, \
             and it {whose}; {elsewhere}",
            dir.display()
        ));
    }
    tracing::warn!(
        dir = %dir.display(),
        mode = format_args!("{mode:o}"),
        "the socket's directory is readable by other users: they can see the socket (0600) but not \
         connect to it; {elsewhere}"
    );
    Ok(())
}

/// Whether `dir` is endorm's own: named `endorm`, or holding nothing but the socket `name`, the
/// token file and the bind's detour.
fn is_endorms_own(dir: &Path, name: &std::ffi::OsStr, detour: &Detour) -> bool {
    if dir.file_name().is_some_and(|n| n == "endorm") {
        return true;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let detour_name = detour.dir.file_name();
    entries.into_iter().all(|entry| {
        entry.is_ok_and(|entry| {
            let entry = entry.file_name();
            entry == name || entry == "token" || Some(entry.as_os_str()) == detour_name
        })
    })
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
    let distinct = token
        .bytes()
        .collect::<std::collections::HashSet<_>>()
        .len();
    let bits = entropy_bits(token);
    if bits < MIN_TOKEN_BITS || distinct < MIN_TOKEN_DISTINCT {
        return Err(format!(
            "the TCP token repeats itself too much to be hard to guess ({distinct} different \
             characters, about {bits:.0} bits; at least {MIN_TOKEN_DISTINCT} and \
             {MIN_TOKEN_BITS:.0} are needed): make one with `openssl rand -hex 32`, or leave the \
             token out to have one created in the token file"
        ));
    }
    Ok(())
}

/// The least information a token's characters must carry (their empirical entropy times its
/// length): a random hex token of 32 characters has about 120 bits; `aaaa…` has none.
const MIN_TOKEN_BITS: f64 = 64.0;

/// The fewest different characters a token must use: a random hex token of 32 characters uses
/// about 14; a short pattern repeated to any length uses only its own.
const MIN_TOKEN_DISTINCT: usize = 8;

/// The token's length times the entropy of its character frequencies, in bits: a cheap bound
/// that refuses one letter repeated, or two in turn, whatever the length.
fn entropy_bits(token: &str) -> f64 {
    let mut counts = std::collections::HashMap::new();
    for byte in token.bytes() {
        *counts.entry(byte).or_insert(0usize) += 1;
    }
    let n = token.len() as f64;
    let per_char: f64 = counts
        .values()
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum();
    per_char * n
}

/// The TCP bearer token: read from `path`, or, when the file is missing or empty, a new random one
/// written there (its directory created 0700 if missing). A token in the file that
/// [`check_token`] refuses, or a file that other users may read, is an error.
///
/// The file never exists with a mode wider than 0600: the token is written to a new file created
/// 0600 beside it, which is then hard-linked into place (a token another process wrote meanwhile
/// wins and is read) or renamed over an empty file.
pub fn token_from_file(path: &Path) -> Result<String, ServerError> {
    let fail = |reason: String| ServerError::Token {
        path: path.to_owned(),
        reason,
    };
    if let Some(token) = read_token(path)? {
        return Ok(token);
    }
    let token = random_token().map_err(|e| fail(format!("cannot read /dev/urandom: {e}")))?;
    create_private_parent(path).map_err(|e| fail(format!("cannot create its directory: {e}")))?;
    let (temp, mut file) = create_beside(path).map_err(|e| fail(e.to_string()))?;
    let written = writeln!(file, "{token}").and_then(|()| file.sync_all());
    drop(file);
    let placed = written.and_then(|()| match std::fs::hard_link(&temp, path) {
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            match std::fs::metadata(path) {
                // An empty file was there: replace it (its mode may be wider).
                Ok(meta) if meta.len() == 0 => std::fs::rename(&temp, path).map(|()| true),
                // Another process wrote a token meanwhile: use that one.
                _ => Ok(false),
            }
        }
        other => other.map(|()| true),
    });
    let _ = std::fs::remove_file(&temp);
    match placed.map_err(|e| fail(e.to_string()))? {
        true => Ok(token),
        false => {
            read_token(path)?.ok_or_else(|| fail("it was emptied while endorm wrote it".into()))
        }
    }
}

/// Writes `text` to `path` through a new 0600 file renamed over it: the file is never readable by
/// other users, nor seen half-written.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let (temp, mut file) = create_beside(path)?;
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| std::fs::rename(&temp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// The token in `path`, checked; `None` when the file is missing or empty.
fn read_token(path: &Path) -> Result<Option<String>, ServerError> {
    use std::io::Read as _;
    use std::os::unix::fs::MetadataExt as _;
    let fail = |reason: String| ServerError::Token {
        path: path.to_owned(),
        reason,
    };
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(e.to_string())),
    };
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| fail(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Ok(None);
    }
    let mode = file.metadata().map_err(|e| fail(e.to_string()))?.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(fail(format!(
            "it is mode {mode:o}, so other users may have read the token: make it private with \
             `chmod 600 {}` (and change the token if they may have)",
            path.display()
        )));
    }
    check_token(token).map_err(fail)?;
    Ok(Some(token.to_owned()))
}

/// A new file (0600, never wider) in the directory of `path`, with a name of its own.
fn create_beside(path: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let pid = std::process::id();
    let mut attempt = 0u32;
    loop {
        let temp = path.with_file_name(format!(".{name}.{pid:x}{attempt:x}"));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
        {
            Ok(file) => return Ok((temp, file)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists && attempt < 64 => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

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

/// 32 random bytes from the OS, as hex.
fn random_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests;
