//! Offline scoring: a JSONL file of `/v1/score` request bodies (each with an optional `id`) in, a
//! JSONL file of responses (each with that `id`) out.
//!
//! Built for long runs on a laptop: every output line is flushed as it is written, `--resume`
//! continues after the ids already in the output, an existing output is never truncated unless
//! asked, and a bad input line becomes an error line for its id while the run goes on.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek as _, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Map, Value};

use crate::api::{ErrorBody, ScoreRequest};
use crate::engine::{EngineError, Scorer};
use crate::jsonl::open_keeping_lines;
use crate::server::engine_error_body;

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
pub struct Job {
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
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
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
    /// The model failed in a way that would fail every following line too.
    #[error(transparent)]
    Engine(EngineError),
}

fn io_error(path: &Path) -> impl Fn(io::Error) -> OfflineError + '_ {
    move |source| OfflineError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Scores every line of `job.input` on `scorer`.
pub fn run(scorer: &mut Scorer<'_>, job: &Job) -> Result<Summary, OfflineError> {
    let input = File::open(&job.input).map_err(io_error(&job.input))?;
    let total = count_lines(&job.input)?;
    let (mut output, mut seen) = open_output(&job.output, job.existing)?;
    let mut end = output.stream_position().map_err(io_error(&job.output))?;
    let progress = crate::progress::bar(job.progress, total, "lines");
    let started = Instant::now();
    let mut summary = Summary::default();

    for (line_index, line) in BufReader::new(input).split(b'\n').enumerate() {
        let line = line.map_err(io_error(&job.input))?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if line.trim_ascii().is_empty()
            || job.shard.is_some_and(|s| line_index % s.count != s.index)
        {
            progress.inc(1);
            continue;
        }
        let (id, request) = parse_bytes(line, line_index + 1);
        let key = id.to_string();
        let record = if seen.contains(&key) {
            if job.existing == Existing::Resume {
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
                    match scorer.score_request(&job.model_id, &request, job.principle.as_deref()) {
                        Ok(response) => Ok(response),
                        Err(e) if e.is_input_error() => Err(engine_error_body(&e)),
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
        if let Err(error) = output.write_all(&bytes) {
            progress.abandon();
            let cut = output.set_len(end).err();
            return Err(OfflineError::Write {
                path: job.output.clone(),
                error,
                cut,
            });
        }
        end += bytes.len() as u64;
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

/// Opens the output as `existing` says, returning the ids it already holds.
///
/// On resume every line already there is kept: a blank line is skipped, a line that is not a
/// JSON object with an `id` (a note, a line of another tool) is kept and reported, and only a last
/// line cut short by a crash (no newline, not whole JSON) is removed, with a warning.
fn open_output(path: &Path, existing: Existing) -> Result<(File, HashSet<String>), OfflineError> {
    let mut seen = HashSet::new();
    let file = match existing {
        Existing::Refuse => OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => OfflineError::OutputExists(path.to_owned()),
                _ => io_error(path)(e),
            })?,
        Existing::Overwrite => File::create(path).map_err(io_error(path))?,
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
        let (_, seen) = open_output(&path, Existing::Resume).unwrap();
        assert_eq!(seen, HashSet::from(["1".to_owned(), "\"x\"".to_owned()]));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn resume_drops_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, "{\"id\":1,\"x\":1}\n{\"id\":2,\"x\"").unwrap();
        let (_, seen) = open_output(&path, Existing::Resume).unwrap();
        assert_eq!(seen, HashSet::from(["1".to_owned()]));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"id\":1,\"x\":1}\n"
        );
        assert!(matches!(
            open_output(&path, Existing::Refuse),
            Err(OfflineError::OutputExists(_))
        ));
    }
}
