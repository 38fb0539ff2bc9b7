//! Tests of the parent module.

use super::*;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn bind_now(path: &Path) -> Result<tokio::net::UnixListener, ServerError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    bind(path)
}

#[test]
fn an_existing_socket_directory_of_ours_is_made_private() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("endorm");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.join("endorm.sock");
    let _listener = bind_now(&socket).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&socket), 0o600);
    // Nothing else is left in it.
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["endorm.sock"]);
}

#[test]
fn a_shared_directory_is_not_changed_and_a_writable_one_is_refused() {
    let scratch = tempfile::tempdir().unwrap();
    // Readable by others and holding other files: left as it is (the socket is 0600).
    let home = scratch.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::write(home.join("notes.txt"), "x").unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _listener = bind_now(&home.join("endorm.sock")).unwrap();
    assert_eq!(mode(&home), 0o755);
    assert_eq!(mode(&home.join("endorm.sock")), 0o600);
    // Writable by others (a shared temp directory): refused, with the way out in the message.
    let shared = scratch.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("someone-else.txt"), "x").unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let error = bind_now(&shared.join("endorm.sock"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("1777") && error.contains("--socket"),
        "{error}"
    );
    assert_eq!(mode(&shared), 0o1777);
    let left: Vec<_> = std::fs::read_dir(&shared)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["someone-else.txt"]);
}

#[test]
fn a_writable_directory_of_another_user_is_refused() {
    let scratch = tempfile::tempdir().unwrap();
    let theirs = scratch.path().join("endorm");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o777)).unwrap();
    if let Err(e) = std::os::unix::fs::chown(&theirs, Some(65534), None) {
        eprintln!("skipped: cannot give a directory to another user here ({e})");
        return;
    }
    let error = bind_now(&theirs.join("endorm.sock"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("another user") && error.contains("--socket"),
        "{error}"
    );
    assert_eq!(mode(&theirs), 0o777);
}

#[test]
fn the_socket_never_exists_with_a_wider_mode() {
    use std::os::unix::fs::FileTypeExt as _;
    use std::sync::atomic::{AtomicBool, Ordering};
    let scratch = tempfile::tempdir().unwrap();
    let socket = scratch.path().join("endorm.sock");
    let done = AtomicBool::new(false);
    let seen = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut modes = std::collections::BTreeSet::new();
            while !done.load(Ordering::Relaxed) {
                if let Ok(meta) = std::fs::symlink_metadata(&socket) {
                    if meta.file_type().is_socket() {
                        modes.insert(meta.permissions().mode() & 0o777);
                    }
                }
            }
            modes
        });
        for _ in 0..300 {
            drop(bind_now(&socket).unwrap());
            std::fs::remove_file(&socket).unwrap();
        }
        done.store(true, Ordering::Relaxed);
        watcher.join().unwrap()
    });
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [0o600]);
}

#[test]
fn long_paths_are_refused_with_the_limit() {
    let long = PathBuf::from(format!("/tmp/{}.sock", "x".repeat(120)));
    let error = bind(&long).unwrap_err().to_string();
    assert!(error.contains(&MAX_SOCKET_PATH.to_string()), "{error}");
}

#[test]
fn short_spaced_or_repetitive_tokens_are_refused() {
    assert!(check_token("0123456789abcdef0123456789abcdef").is_ok());
    assert!(check_token("9f86d081884c7d659a2feaa0c55ad015").is_ok());
    for repetitive in ["a".repeat(32), "ab".repeat(40), "abcd".repeat(12)] {
        let error = check_token(&repetitive).unwrap_err();
        assert!(error.contains("repeats itself"), "{repetitive}: {error}");
    }
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
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let error = token_from_file(&path).unwrap_err().to_string();
    assert!(error.contains("at least 32"), "{error}");
}

#[test]
fn a_token_written_into_an_existing_empty_file_is_never_wider_than_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let token = token_from_file(&path).unwrap();
    assert_eq!(token.len(), 64);
    assert_eq!(mode(&path), 0o600);
    assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), token);
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["token"]);
}

#[test]
fn a_token_file_other_users_can_read_is_refused() {
    const TOKEN: &str = "9f86d081884c7d659a2feaa0c55ad0159f86d081884c7d659a2feaa0c55ad015";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = token_from_file(&path).unwrap_err().to_string();
    assert!(
        error.contains("644") && error.contains("chmod 600"),
        "{error}"
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert_eq!(token_from_file(&path).unwrap(), TOKEN);
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
