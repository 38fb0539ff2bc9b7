//! Append-only JSONL files that survive a crash: the output of `endorm score` and the eval cache.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;

/// Opens (or creates) `path` to append to it after the lines it already holds.
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
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(&io_error)?;
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

    #[test]
    fn a_missing_file_is_created_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.jsonl");
        open_resumable(&path, |e| e, |_| Ok(true)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"");
    }
}
