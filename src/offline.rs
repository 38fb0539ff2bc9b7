//! Offline scoring: a JSONL file of `/v1/score` request bodies (each with an optional `id`) in, a
//! JSONL file of responses (each with that `id`) out.
//!
//! Built for long runs on a laptop: every output line is flushed as it is written, `--resume`
//! continues after the ids already in the output, an existing output is never truncated unless
//! asked, and a bad input line becomes an error line for its id while the run goes on.
//!
//! An output is written by one run at a time: [`Output::open`] takes an exclusive lock on it
//! (`flock`) for the run, and a second run on the same file refuses at once ([`EXIT_LOCKED`]), so
//! that a requeued shard overlapping the old one cannot interleave lines. [`merge`] checks and
//! joins the outputs of `--shard` runs (`endorm verify`, `endorm merge`).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek as _, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Map, Value};

use crate::api::{ErrorBody, ScoreRequest};
use crate::engine::{EngineError, Scorer};
use crate::jsonl::{lock_holders, open_keeping_lines, try_lock_exclusive};

pub mod merge;

/// The exit status of `endorm score` when another run holds its output: `EX_TEMPFAIL` of
/// sysexits.h, "try again later" (a scheduler may requeue the task).
pub const EXIT_LOCKED: u8 = 75;

/// What to do with an output file that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Existing {
    /// Refuse to start.
    #[default]
    Refuse,
    /// Keep it and skip the ids it holds.
    Resume,
    /// Start over.
    Overwrite,
}

/// This run's share of the input: lines `i, i + n, i + 2n, …` (0-based), for batch schedulers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// Which shard, `0..count`.
    pub index: usize,
    /// How many shards.
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// Parses `i/N`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed = s
            .split_once('/')
            .and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
        match parsed {
            Some((index, count)) if index < count => Ok(Shard { index, count }),
            _ => Err(format!(
                "`{s}` is not a shard: write i/N with 0 <= i < N, e.g. 0/4"
            )),
        }
    }
}

/// An offline run.
#[derive(Debug, Clone)]
pub struct Run {
    /// The JSONL input.
    pub input: PathBuf,
    /// The JSONL output.
    pub output: PathBuf,
    /// What to do if the output exists.
    pub existing: Existing,
    /// Only this share of the lines.
    pub shard: Option<Shard>,
    /// The id the model is reported under.
    pub model_id: String,
    /// The principle for chat requests that name none.
    pub principle: Option<String>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// How a run went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Lines scored.
    pub scored: usize,
    /// Lines written as errors.
    pub failed: usize,
    /// Lines skipped because their id was already in the output.
    pub skipped: usize,
    /// Tokens decoded.
    pub tokens: usize,
}

/// Failures that stop a run (a bad line does not: it becomes an error line).
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// The output exists and neither resuming nor overwriting was asked for.
    #[error("{} exists: pass --resume to continue it or --force to overwrite it", .0.display())]
    OutputExists(PathBuf),
    /// Reading or writing a file failed. (Not a `source`: the message says it once.)
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        error: io::Error,
    },
    /// `--resume` on an output that is not a regular file (`-`, a pipe, a terminal).
    #[error("{}: --resume reads the output back, so it needs a regular file", .0.display())]
    ResumeNeedsFile(PathBuf),
    /// Writing an output line failed (a full disk, a file size limit). The line is removed again,
    /// so the output holds every line written before it, whole, and `--resume` continues it.
    #[error(
        "cannot write {}: {error}; {}free some space and run again with --resume to continue",
        path.display(),
        match cut {
            None => "every line written before is intact: ".to_owned(),
            Some(e) => format!("its last line may be cut short ({e}; --resume removes it): "),
        }
    )]
    Write {
        /// The output.
        path: PathBuf,
        /// The failure.
        error: io::Error,
        /// Why the partly written line could not be removed, if it could not.
        cut: Option<io::Error>,
    },
    /// Another run writes the output now (it holds its lock).
    #[error(
        "{} is being written by another run{}: two runs on one output would mix their lines. \
         Nothing was changed; wait for that run to end (or stop it) and resume",
        path.display(),
        match holders.as_slice() {
            [] => " (not of this machine, or it gave no pid)".to_owned(),
            [pid] => format!(" (pid {pid})"),
            pids => format!(" (pids {pids:?})"),
        }
    )]
    Locked {
        /// The output.
        path: PathBuf,
        /// The processes of this machine that hold its lock.
        holders: Vec<u32>,
    },
    /// The model failed in a way that would fail every following line too.
    #[error(transparent)]
    Engine(EngineError),
}

fn io_error(path: &Path) -> impl Fn(io::Error) -> OfflineError + '_ {
    move |error| OfflineError::Io {
        path: path.to_owned(),
        error,
    }
}

/// The name that stands for standard input (`--input`) or output (`--output`).
pub const STDIO: &str = "-";

fn is_stdio(path: &Path) -> bool {
    path.as_os_str() == STDIO
}

/// Whether `path` is a file that can be read twice and cut: not `-`, a pipe, a terminal or a
/// device such as `/dev/stdout` (which cannot seek).
fn is_regular(path: &Path) -> bool {
    !is_stdio(path) && std::fs::metadata(path).map_or(true, |m| m.is_file())
}

/// Where the lines go: a regular file (whose length is known, so a line cut short can be
/// removed), or a stream (`-`, a pipe, `/dev/stdout`), written line by line and flushed.
enum Sink {
    File { file: File, end: u64 },
    Stream(Box<dyn Write>),
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sink::File { file, end } => f
                .debug_struct("File")
                .field("file", file)
                .field("end", end)
                .finish(),
            Sink::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// Scores every line of `run.input` on `scorer` into `output` (opened for `run`). `-` reads
/// standard input or writes standard output, as does a pipe or a device (`/dev/stdout`): lines go
/// out as they are scored, the progress bar (on stderr) has no total, and `--resume` needs a
/// regular output file.
pub fn run(scorer: &mut Scorer<'_>, run: &Run, output: Output) -> Result<Summary, OfflineError> {
    let input: Box<dyn BufRead> = if is_stdio(&run.input) {
        Box::new(io::stdin().lock())
    } else {
        Box::new(BufReader::new(
            File::open(&run.input).map_err(io_error(&run.input))?,
        ))
    };
    let total = if is_regular(&run.input) {
        count_lines(&run.input)?
    } else {
        0
    };
    let Output {
        sink: mut output,
        mut seen,
        lock: _lock,
    } = output;
    let progress = crate::progress::bar(run.progress, total, "lines");
    if total == 0 {
        progress.unset_length();
    }
    let started = Instant::now();
    let mut summary = Summary::default();

    for (line_index, line) in input.split(b'\n').enumerate() {
        let line = line.map_err(io_error(&run.input))?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if line.trim_ascii().is_empty()
            || run.shard.is_some_and(|s| line_index % s.count != s.index)
        {
            progress.inc(1);
            continue;
        }
        let (id, request) = parse_bytes(line, line_index + 1);
        let key = id.to_string();
        let record = if seen.contains(&key) {
            if run.existing == Existing::Resume {
                summary.skipped += 1;
                progress.inc(1);
                continue;
            }
            Err(error_body(
                "duplicate_id",
                format!("id {key} appears more than once in the input"),
            ))
        } else {
            match request {
                Err(error) => Err(error),
                Ok(request) => {
                    match scorer.score_request(&run.model_id, &request, run.principle.as_deref()) {
                        Ok(response) => Ok(response),
                        Err(e) if e.is_input_error() => Err(e.body()),
                        // A model that cannot decode fails every line after: stop, keep the output.
                        Err(e) => {
                            progress.abandon();
                            return Err(OfflineError::Engine(e));
                        }
                    }
                }
            }
        };
        let value = match record {
            Ok(response) => {
                summary.scored += 1;
                summary.tokens += response.usage.total_tokens;
                with_id(id, serde_json::to_value(&response).unwrap_or(Value::Null))
            }
            Err(error) => {
                summary.failed += 1;
                with_id(id, serde_json::to_value(&error).unwrap_or(Value::Null))
            }
        };
        // One write per line; a line cut short by a full disk is removed again, so the output
        // only ever holds whole lines and `--resume` picks up right after them.
        let mut bytes = value.to_string().into_bytes();
        bytes.push(b'\n');
        let written = match &mut output {
            Sink::File { file, end } => match file.write_all(&bytes) {
                Ok(()) => {
                    *end += bytes.len() as u64;
                    Ok(())
                }
                Err(error) => Err((error, file.set_len(*end).err())),
            },
            Sink::Stream(stream) => stream
                .write_all(&bytes)
                .and_then(|()| stream.flush())
                .map_err(|error| (error, None)),
        };
        if let Err((error, cut)) = written {
            progress.abandon();
            return Err(OfflineError::Write {
                path: run.output.clone(),
                error,
                cut,
            });
        }
        seen.insert(key);
        progress.inc(1);
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        progress.set_message(format!("{:.0} tok/s", summary.tokens as f64 / secs));
    }
    progress.finish_and_clear();
    Ok(summary)
}

/// [`parse_line`] for a line as read: one that is not UTF-8 is an error for its line number.
fn parse_bytes(line: &[u8], line_number: usize) -> (Value, Result<ScoreRequest, ErrorBody>) {
    match std::str::from_utf8(line) {
        Ok(line) => parse_line(line, line_number),
        Err(e) => {
            let error = error_body(
                "invalid_json",
                format!(
                    "the line is not valid UTF-8 (byte {} of the line), so not JSON; save the file \
                     as UTF-8",
                    e.valid_up_to() + 1
                ),
            );
            (Value::from(line_number), Err(error))
        }
    }
}

/// Splits a line into its id (the line number when it has none) and its request.
fn parse_line(line: &str, line_number: usize) -> (Value, Result<ScoreRequest, ErrorBody>) {
    let mut object = match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(object)) => object,
        Ok(_) => {
            let error = error_body("invalid_json", "the line is not a JSON object".into());
            return (Value::from(line_number), Err(error));
        }
        Err(e) => {
            let error = error_body("invalid_json", format!("the line is not valid JSON: {e}"));
            return (Value::from(line_number), Err(error));
        }
    };
    let id = object
        .remove("id")
        .unwrap_or_else(|| Value::from(line_number));
    let request = serde_json::from_value::<ScoreRequest>(Value::Object(object))
        .map_err(|e| error_body("invalid_request", format!("not a /v1/score request: {e}")));
    (id, request)
}

fn error_body(code: &str, message: String) -> ErrorBody {
    ErrorBody::new("invalid_request_error", code, message)
}

/// The output line: `{"id": ..., ...body}`.
fn with_id(id: Value, body: impl serde::Serialize) -> Value {
    let mut line = Map::new();
    line.insert("id".into(), id);
    if let Ok(Value::Object(fields)) = serde_json::to_value(body) {
        line.extend(fields);
    }
    Value::Object(line)
}

fn count_lines(path: &Path) -> Result<u64, OfflineError> {
    let file = File::open(path).map_err(io_error(path))?;
    let mut count = 0;
    for line in BufReader::new(file).split(b'\n') {
        line.map_err(io_error(path))?;
        count += 1;
    }
    Ok(count)
}

/// A run's output, locked for the run when it is a file: what [`run`] writes to.
#[derive(Debug)]
pub struct Output {
    sink: Sink,
    /// The ids it already holds.
    seen: HashSet<String>,
    /// The descriptor that holds the lock (the lock goes with the last one closed); none for a
    /// stream.
    lock: Option<File>,
}

impl Output {
    /// Opens and locks the output as `existing` says, reading the ids it already holds. Another
    /// run holding it is [`OfflineError::Locked`], before anything in it changes.
    ///
    /// On resume every line already there is kept: a blank line is skipped, a line that is not a
    /// JSON object with an `id` (a note, a line of another tool) is kept and reported, and only a
    /// last line cut short by a crash (no newline, not whole JSON) is removed, with a warning.
    /// `-`, a pipe or a device is written as a stream: nothing to lock, resume or cut.
    pub fn open(path: &Path, existing: Existing) -> Result<Output, OfflineError> {
        if !is_regular(path) {
            if existing == Existing::Resume {
                return Err(OfflineError::ResumeNeedsFile(path.to_owned()));
            }
            let stream: Box<dyn Write> = if is_stdio(path) {
                Box::new(io::stdout())
            } else {
                // A pipe or a device: written to as it is, never created, truncated or sought.
                Box::new(
                    OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(io_error(path))?,
                )
            };
            return Ok(Output {
                sink: Sink::Stream(stream),
                seen: HashSet::new(),
                lock: None,
            });
        }
        let lock = match existing {
            Existing::Refuse => OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::AlreadyExists => OfflineError::OutputExists(path.to_owned()),
                    _ => io_error(path)(e),
                })?,
            Existing::Overwrite | Existing::Resume => OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(io_error(path))?,
        };
        if !try_lock_exclusive(&lock).map_err(io_error(path))? {
            return Err(OfflineError::Locked {
                path: path.to_owned(),
                holders: lock_holders(&lock),
            });
        }
        let (mut file, seen) = open_output(path, existing, &lock)?;
        let end = file.stream_position().map_err(io_error(path))?;
        Ok(Output {
            sink: Sink::File { file, end },
            seen,
            lock: Some(lock),
        })
    }
}

/// Opens the locked output `lock` as `existing` says, returning the ids it already holds.
fn open_output(
    path: &Path,
    existing: Existing,
    lock: &File,
) -> Result<(File, HashSet<String>), OfflineError> {
    let mut seen = HashSet::new();
    let file = match existing {
        Existing::Refuse => lock.try_clone().map_err(io_error(path))?,
        Existing::Overwrite => {
            lock.set_len(0).map_err(io_error(path))?;
            lock.try_clone().map_err(io_error(path))?
        }
        Existing::Resume => {
            let opened = open_keeping_lines(path, io_error(path), |number, line| {
                if line.trim_ascii().is_empty() {
                    return Ok(());
                }
                match serde_json::from_slice::<Value>(line) {
                    Ok(Value::Object(mut object)) if object.contains_key("id") => {
                        seen.insert(object.remove("id").unwrap_or_default().to_string());
                    }
                    _ => tracing::warn!(
                        "{}:{number}: kept a line that is not an output line (a JSON object with \
                         an \"id\"); it marks no input line as done",
                        path.display()
                    ),
                }
                Ok(())
            })?;
            if let Some(torn) = opened.torn {
                tracing::warn!(
                    "{}: removed its last line, cut short by an interrupted write ({} bytes: \
                     {:?}); its input line is scored again",
                    path.display(),
                    torn.len(),
                    String::from_utf8_lossy(&torn[..torn.len().min(120)])
                );
            }
            opened.file
        }
    };
    Ok((file, seen))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_reject_nonsense() {
        assert_eq!("1/4".parse(), Ok(Shard { index: 1, count: 4 }));
        assert!("4/4".parse::<Shard>().is_err());
        assert!("x/2".parse::<Shard>().is_err());
        assert!("3".parse::<Shard>().is_err());
    }

    #[test]
    fn lines_keep_their_id_or_get_their_number() {
        let (id, request) = parse_line(r#"{"id": "a", "prompt": "p", "candidates": ["x"]}"#, 7);
        assert_eq!(id, Value::from("a"));
        assert_eq!(request.unwrap().candidates, vec!["x".to_owned()]);
        let (id, request) = parse_line(r#"{"prompt": "p", "candidates": []}"#, 7);
        assert_eq!(id, Value::from(7));
        assert!(request.is_ok());
    }

    #[test]
    fn a_line_that_is_not_utf8_is_an_error_for_its_number() {
        let (id, request) = parse_bytes(b"{\"id\": \"x\", \"prompt\": \"\xe9\"}", 5);
        assert_eq!(id, Value::from(5));
        let error = request.unwrap_err().error;
        assert_eq!(error.code, "invalid_json");
        assert!(error.message.contains("byte 24"), "{}", error.message);
    }

    #[test]
    fn bad_lines_become_errors() {
        let (id, request) = parse_line("{not json", 3);
        assert_eq!(id, Value::from(3));
        assert_eq!(request.unwrap_err().error.code, "invalid_json");
        let (_, request) = parse_line(r#"{"id": 1, "candidates": "x"}"#, 3);
        assert_eq!(request.unwrap_err().error.code, "invalid_request");
    }

    #[test]
    fn resume_keeps_lines_it_cannot_read_and_their_ids_stay_undone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let text = "{\"id\":1}\n\nnot json\n{\"no_id\":true}\n{\"id\":\"x\"}\n";
        std::fs::write(&path, text).unwrap();
        let Output { seen, .. } = Output::open(&path, Existing::Resume).unwrap();
        assert_eq!(seen, HashSet::from(["1".to_owned(), "\"x\"".to_owned()]));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn resume_drops_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, "{\"id\":1,\"x\":1}\n{\"id\":2,\"x\"").unwrap();
        let Output { seen, .. } = Output::open(&path, Existing::Resume).unwrap();
        assert_eq!(seen, HashSet::from(["1".to_owned()]));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"id\":1,\"x\":1}\n"
        );
        assert!(matches!(
            Output::open(&path, Existing::Refuse),
            Err(OfflineError::OutputExists(_))
        ));
    }

    #[test]
    fn a_locked_output_is_refused_unchanged_whatever_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, "{\"id\":1}\n{\"id\":2,\"x\"").unwrap();
        let held = Output::open(&path, Existing::Resume).unwrap();
        for existing in [Existing::Resume, Existing::Overwrite] {
            match Output::open(&path, existing) {
                Err(OfflineError::Locked { holders, .. }) if cfg!(target_os = "linux") => {
                    assert_eq!(holders, [std::process::id()]);
                }
                Err(OfflineError::Locked { .. }) => {}
                other => panic!("{existing:?}: {other:?}"),
            }
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"id\":1}\n");
        drop(held);
        assert!(Output::open(&path, Existing::Overwrite).is_ok());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }
}
