//! Append-only JSONL files that survive a crash: the output of `endorm score` and the eval cache.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write as _};
use std::path::Path;

/// An existing file opened by [`open_keeping_lines`], positioned at its end.
#[derive(Debug)]
pub struct Appending {
    /// The file, ready to append to.
    pub file: File,
    /// A last line without its newline that is not a whole JSON value (a write cut short by a
    /// crash or a full disk): removed from the file, returned here so it can be reported.
    pub torn: Option<Vec<u8>>,
}

/// Opens (or creates) `path` to append to it, keeping every line it already holds.
///
/// Each line is handed to `visit` with its 1-based number, without its line ending; what `visit`
/// makes of a line (blank, not JSON, from another run) never changes the file. The only bytes
/// ever removed are a last line without its newline that is not a whole JSON value: a write cut
/// short. A last line without its newline that *is* a whole JSON value was written completely
/// bar its newline: it is kept (and visited), and the newline is added so that appended lines
/// start on a fresh line.
pub fn open_keeping_lines<E>(
    path: &Path,
    io_error: impl Fn(io::Error) -> E,
    mut visit: impl FnMut(usize, &[u8]) -> Result<(), E>,
) -> Result<Appending, E> {
    let mut file = open_read_write(path).map_err(&io_error)?;
    let mut reader = BufReader::new(&file);
    let mut line = Vec::new();
    let mut number = 0;
    let mut complete = 0u64;
    let mut torn = None;
    let mut needs_newline = false;
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line).map_err(&io_error)?;
        if read == 0 {
            break;
        }
        number += 1;
        match line.strip_suffix(b"\n") {
            Some(body) => visit(number, body.strip_suffix(b"\r").unwrap_or(body))?,
            None if is_whole_json(&line) => {
                visit(number, &line)?;
                needs_newline = true;
            }
            None => {
                torn = Some(std::mem::take(&mut line));
                break;
            }
        }
        complete += read as u64;
    }
    if torn.is_some() {
        file.set_len(complete).map_err(&io_error)?;
    }
    file.seek(SeekFrom::End(0)).map_err(&io_error)?;
    if needs_newline {
        file.write_all(b"\n").map_err(&io_error)?;
    }
    Ok(Appending { file, torn })
}

fn is_whole_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}

/// Opens (or creates) `path` to append to it after the lines it already holds, for files only a
/// program writes (the eval cache): unlike [`open_keeping_lines`], it cuts the file at the first
/// line `accept` refuses.
///
/// Each complete line (ended by `\n`) is handed to `accept` in order until it answers `false` or
/// the file ends. The file is then cut after the last accepted line, which drops a line a crash
/// left half written (with or without its JSON closed) and everything after a line that does not
/// belong, so that whatever is appended next starts on a fresh line.
pub fn open_resumable<E>(
    path: &Path,
    io_error: impl Fn(io::Error) -> E,
    mut accept: impl FnMut(&[u8]) -> Result<bool, E>,
) -> Result<File, E> {
    let mut file = open_read_write(path).map_err(&io_error)?;
    let mut reader = BufReader::new(&file);
    let mut line = Vec::new();
    let mut complete = 0u64;
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line).map_err(&io_error)?;
        let Some(body) = line.strip_suffix(b"\n") else {
            break;
        };
        if !accept(body)? {
            break;
        }
        complete += read as u64;
    }
    file.set_len(complete).map_err(&io_error)?;
    file.seek(SeekFrom::End(0)).map_err(&io_error)?;
    Ok(file)
}

/// Takes an exclusive advisory lock on `file` (`flock`), without waiting: `Ok(false)` when another
/// open file holds one. Held until every descriptor of this open file is closed. Over NFS, Linux
/// emulates it with a lock on the whole file that other clients see too.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: `flock` on a descriptor this `File` owns; it changes no memory.
    let status = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if status == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    match error.kind() {
        io::ErrorKind::WouldBlock => Ok(false),
        _ => Err(error),
    }
}

/// The processes of this machine that hold a `flock` on `file`, from Linux's `/proc/locks`
/// (empty elsewhere, and for a holder on another machine of a network file system).
pub fn lock_holders(file: &File) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let (Ok(meta), Ok(locks)) = (file.metadata(), std::fs::read_to_string("/proc/locks")) else {
        return Vec::new();
    };
    // `/proc/locks` names a file `MAJOR:MINOR:INODE`, the device numbers in hex.
    let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    let name = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    holders_in(&locks, &name)
}

/// The pids of the `FLOCK` lines of a `/proc/locks` text on the file `name`.
fn holders_in(locks: &str, name: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = locks
        .lines()
        .filter_map(|line| {
            // `1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF`; a process waiting for the lock
            // has `->` after the number, and holds nothing.
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&name))
                .then(|| fields.get(4)?.parse().ok())
                .flatten()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Opens (or creates) `path` for reading and appending without truncating it.
fn open_read_write(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resume(contents: &str, accept_up_to: usize) -> (Vec<String>, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.jsonl");
        std::fs::write(&path, contents).unwrap();
        let mut seen = Vec::new();
        open_resumable(
            &path,
            |e| e,
            |line| {
                seen.push(String::from_utf8_lossy(line).into_owned());
                Ok(seen.len() <= accept_up_to)
            },
        )
        .unwrap();
        (seen, std::fs::read_to_string(&path).unwrap())
    }

    #[test]
    fn a_line_without_its_newline_is_dropped_even_when_it_parses() {
        let (seen, kept) = resume("{\"a\":1}\n{\"b\":2}", usize::MAX);
        assert_eq!(seen, ["{\"a\":1}"]);
        assert_eq!(kept, "{\"a\":1}\n");
    }

    #[test]
    fn the_file_is_cut_before_the_first_refused_line() {
        let (seen, kept) = resume("1\n2\n3\n", 1);
        assert_eq!(seen, ["1", "2"]);
        assert_eq!(kept, "1\n");
    }

    fn keep(contents: &[u8]) -> (Vec<(usize, String)>, Option<String>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.jsonl");
        std::fs::write(&path, contents).unwrap();
        let mut seen = Vec::new();
        let opened = open_keeping_lines(
            &path,
            |e| e,
            |number, line| {
                seen.push((number, String::from_utf8_lossy(line).into_owned()));
                Ok(())
            },
        )
        .unwrap();
        let torn = opened
            .torn
            .map(|t| String::from_utf8_lossy(&t).into_owned());
        (seen, torn, std::fs::read(&path).unwrap())
    }

    #[test]
    fn every_line_is_kept_whatever_it_holds() {
        let text = b"{\"a\":1}\n\n  \nnot json\n\xff\xfe\n[1]\r\n{\"b\":2}\n";
        let (seen, torn, kept) = keep(text);
        assert_eq!(kept, text);
        assert_eq!(torn, None);
        let numbers: Vec<usize> = seen.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(seen[5].1, "[1]");
    }

    #[test]
    fn only_a_torn_last_line_is_removed() {
        let (seen, torn, kept) = keep(b"{\"a\":1}\n\n{\"b\":2, \"c");
        assert_eq!(seen.len(), 2);
        assert_eq!(torn.as_deref(), Some("{\"b\":2, \"c"));
        assert_eq!(kept, b"{\"a\":1}\n\n");
    }

    #[test]
    fn a_whole_last_line_without_its_newline_is_kept_and_ended() {
        let (seen, torn, kept) = keep(b"{\"a\":1}\n{\"b\":2}");
        assert_eq!(seen, [(1, "{\"a\":1}".into()), (2, "{\"b\":2}".into())]);
        assert_eq!(torn, None);
        assert_eq!(kept, b"{\"a\":1}\n{\"b\":2}\n");
    }

    #[test]
    fn a_second_lock_on_a_file_is_refused_and_its_holder_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let first = open_read_write(&path).unwrap();
        let second = open_read_write(&path).unwrap();
        assert!(try_lock_exclusive(&first).unwrap());
        assert!(!try_lock_exclusive(&second).unwrap());
        if cfg!(target_os = "linux") {
            assert_eq!(lock_holders(&second), [std::process::id()]);
        }
        drop(first);
        assert!(try_lock_exclusive(&second).unwrap(), "released on close");
    }

    #[test]
    fn lock_holders_are_read_from_proc_locks_lines() {
        let locks = "1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 77 08:01:1234 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 99 08:01:1234 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 5 08:01:999 0 EOF\n";
        assert_eq!(holders_in(locks, "08:01:1234"), [4242]);
    }

    #[test]
    fn a_missing_file_is_created_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.jsonl");
        open_resumable(&path, |e| e, |_| Ok(true)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"");
    }
}
