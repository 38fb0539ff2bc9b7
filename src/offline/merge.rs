//! The outputs of `endorm score --shard i/N` runs, checked against their input (`endorm verify`)
//! and joined into one output in input order (`endorm merge`).
//!
//! The contract checked is the one `endorm score` keeps: every input line (but blank ones) has an
//! id, its `"id"` or else its 1-based line number, and the outputs together hold exactly one line
//! for each, a JSON object with that `"id"` (a score, or an `"error"` for a line that could not be
//! scored). Anything else is reported by place (`file:line`): an id of the input with no line, an
//! id with two lines (two overlapping runs of a shard, a part given twice), a line with an id the
//! input does not have, a line that does not parse (a write cut short: resume that shard).
//! A merge reads the outputs' lines by offset, so it holds one index entry per line in memory, not
//! the lines themselves.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::{io_error, OfflineError};

/// What the outputs hold against their input.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Ids in the input (its non-blank lines).
    pub input_ids: usize,
    /// Input ids with exactly one output line.
    pub present: usize,
    /// Of those, lines that are an error (`"error"`) rather than a score.
    pub errors: usize,
    /// Input ids without an output line, in input order (`id` as JSON text).
    pub missing: Vec<String>,
    /// Ids with more than one output line, and where each is.
    pub duplicates: Vec<Duplicate>,
    /// Output lines whose id is not an input id.
    pub unknown: Vec<Place>,
    /// Output lines that are not a JSON object with an `"id"`.
    pub bad_lines: Vec<BadLine>,
    /// Ids that two input lines share (`endorm score` writes an error line for the second).
    pub input_duplicates: Vec<String>,
}

/// One id found on several output lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Duplicate {
    /// The id, as JSON text.
    pub id: String,
    /// Every line that has it.
    pub places: Vec<Place>,
}

/// A line of an output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Place {
    /// The file.
    pub file: PathBuf,
    /// The line, 1-based.
    pub line: usize,
    /// The id on it, as JSON text (empty when it has none).
    pub id: String,
}

/// An output line that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadLine {
    /// Where.
    pub place: Place,
    /// What is wrong with it.
    pub why: String,
}

impl Report {
    /// Whether the outputs hold exactly one parsed line for every input id and nothing else.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
            && self.duplicates.is_empty()
            && self.unknown.is_empty()
            && self.bad_lines.is_empty()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 10;
        let place = |p: &Place| format!("{}:{}", p.file.display(), p.line);
        writeln!(
            f,
            "{} input ids; {} with exactly one output line ({} of them error lines)",
            self.input_ids, self.present, self.errors
        )?;
        if !self.missing.is_empty() {
            let shown: Vec<&str> = self
                .missing
                .iter()
                .take(SHOWN)
                .map(String::as_str)
                .collect();
            let more = self.missing.len().saturating_sub(SHOWN);
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            writeln!(
                f,
                "missing: {} ids: {}{more}",
                self.missing.len(),
                shown.join(", ")
            )?;
        }
        for duplicate in self.duplicates.iter().take(SHOWN) {
            let places: Vec<String> = duplicate.places.iter().map(place).collect();
            writeln!(f, "duplicate: id {} on {}", duplicate.id, places.join(", "))?;
        }
        if self.duplicates.len() > SHOWN {
            writeln!(f, "duplicate: {} more ids", self.duplicates.len() - SHOWN)?;
        }
        for unknown in self.unknown.iter().take(SHOWN) {
            writeln!(
                f,
                "unknown: id {} on {} is not in the input",
                unknown.id,
                place(unknown)
            )?;
        }
        if self.unknown.len() > SHOWN {
            writeln!(f, "unknown: {} more lines", self.unknown.len() - SHOWN)?;
        }
        for bad in self.bad_lines.iter().take(SHOWN) {
            writeln!(f, "bad line: {}: {}", place(&bad.place), bad.why)?;
        }
        if self.bad_lines.len() > SHOWN {
            writeln!(f, "bad line: {} more", self.bad_lines.len() - SHOWN)?;
        }
        for id in self.input_duplicates.iter().take(SHOWN) {
            writeln!(f, "note: id {id} is on more than one input line")?;
        }
        if self.is_complete() {
            write!(f, "complete: every input id has exactly one output line")
        } else {
            write!(f, "not complete")
        }
    }
}

/// Where each input id's line is in the outputs.
struct Index {
    report: Report,
    /// Input ids in input order.
    order: Vec<String>,
    /// Each id's lines: (output index, byte offset, length without the newline, line number).
    lines: HashMap<String, Vec<(usize, u64, usize, usize)>>,
}

/// The id `endorm score` gives an input line (`offline::parse_line`): its `"id"`, else its line
/// number; as JSON text.
fn input_id(line: &[u8], number: usize) -> String {
    match serde_json::from_slice::<Value>(line) {
        Ok(Value::Object(mut object)) if object.contains_key("id") => {
            object.remove("id").unwrap_or_default().to_string()
        }
        _ => Value::from(number).to_string(),
    }
}

/// Reads every line of `path` with its 1-based number, byte offset and whether it ended with a
/// newline; `\r\n` counts as `\n`.
fn each_line(
    path: &Path,
    mut visit: impl FnMut(usize, u64, &[u8], bool) -> Result<(), OfflineError>,
) -> Result<(), OfflineError> {
    let file = File::open(path).map_err(io_error(path))?;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let (mut number, mut offset) = (0, 0u64);
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(io_error(path))?;
        if read == 0 {
            return Ok(());
        }
        number += 1;
        let ended = line.ends_with(b"\n");
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        visit(number, offset, body, ended)?;
        offset += read as u64;
    }
}

fn index(input: &Path, outputs: &[PathBuf]) -> Result<Index, OfflineError> {
    let mut report = Report::default();
    let mut order = Vec::new();
    let mut lines: HashMap<String, Vec<(usize, u64, usize, usize)>> = HashMap::new();
    each_line(input, |number, _, line, _| {
        if line.trim_ascii().is_empty() {
            return Ok(());
        }
        let id = input_id(line, number);
        if lines.insert(id.clone(), Vec::new()).is_some() {
            report.input_duplicates.push(id);
        } else {
            order.push(id);
        }
        Ok(())
    })?;
    report.input_ids = order.len();
    for (which, path) in outputs.iter().enumerate() {
        each_line(path, |number, offset, line, ended| {
            if line.trim_ascii().is_empty() {
                return Ok(());
            }
            let mut place = Place {
                file: path.clone(),
                line: number,
                id: String::new(),
            };
            let why = match serde_json::from_slice::<Value>(line) {
                Ok(Value::Object(mut object)) => match object.remove("id") {
                    Some(id) => {
                        place.id = id.to_string();
                        None
                    }
                    None => Some("a JSON object without an \"id\"".to_owned()),
                },
                Ok(_) => Some("not a JSON object".to_owned()),
                Err(_) if !ended => Some(
                    "cut short (a write interrupted: `endorm score --resume` removes it)".into(),
                ),
                Err(e) => Some(format!("not JSON: {e}")),
            };
            if let Some(why) = why {
                report.bad_lines.push(BadLine { place, why });
                return Ok(());
            }
            match lines.get_mut(&place.id) {
                Some(found) => found.push((which, offset, line.len(), number)),
                None => report.unknown.push(place),
            }
            Ok(())
        })?;
    }
    for id in &order {
        let found = &lines[id];
        match found.as_slice() {
            [] => report.missing.push(id.clone()),
            [_] => report.present += 1,
            many => report.duplicates.push(Duplicate {
                id: id.clone(),
                places: many
                    .iter()
                    .map(|&(which, _, _, line)| Place {
                        file: outputs[which].clone(),
                        line,
                        id: id.clone(),
                    })
                    .collect(),
            }),
        }
    }
    Ok(Index {
        report,
        order,
        lines,
    })
}

/// Checks `outputs` against `input`: [`Report::is_complete`] when every input id has exactly one
/// parsed line in them and they hold nothing else. Counts the error lines too (a read of each
/// present line).
pub fn verify(input: &Path, outputs: &[PathBuf]) -> Result<Report, OfflineError> {
    let index = index(input, outputs)?;
    let mut report = index.report;
    report.errors = count_errors(&index.order, &index.lines, outputs)?;
    Ok(report)
}

fn count_errors(
    order: &[String],
    lines: &HashMap<String, Vec<(usize, u64, usize, usize)>>,
    outputs: &[PathBuf],
) -> Result<usize, OfflineError> {
    let mut reader = Lines::open(outputs)?;
    let mut errors = 0;
    for id in order {
        if let [(which, offset, len, _)] = lines[id].as_slice() {
            let line = reader.read(*which, *offset, *len)?;
            let is_error = serde_json::from_slice::<Value>(&line)
                .is_ok_and(|value| value.get("error").is_some_and(|e| !e.is_null()));
            errors += usize::from(is_error);
        }
    }
    Ok(errors)
}

/// The outputs, opened to read lines by offset.
struct Lines<'a> {
    paths: &'a [PathBuf],
    files: Vec<File>,
}

impl<'a> Lines<'a> {
    fn open(paths: &'a [PathBuf]) -> Result<Self, OfflineError> {
        let files = paths
            .iter()
            .map(|path| File::open(path).map_err(io_error(path)))
            .collect::<Result<_, _>>()?;
        Ok(Lines { paths, files })
    }

    fn read(&mut self, which: usize, offset: u64, len: usize) -> Result<Vec<u8>, OfflineError> {
        let path = &self.paths[which];
        let file = &mut self.files[which];
        let mut line = vec![0; len];
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(&mut line))
            .map_err(io_error(path))?;
        Ok(line)
    }
}

/// Why a merge did not write its output.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// The outputs do not hold exactly one line for every input id.
    #[error("{0}\nnothing written: score what is missing (`endorm score --resume` on its shard) and remove what is duplicated or broken first")]
    Incomplete(Box<Report>),
    /// The output exists and `force` was not given.
    #[error("{} exists: pass --force to replace it", .0.display())]
    OutputExists(PathBuf),
    /// The output is one of the parts being merged.
    #[error("{} is one of the parts: write the merged output to another file", .0.display())]
    OutputIsPart(PathBuf),
    /// Reading or writing failed.
    #[error(transparent)]
    Offline(#[from] OfflineError),
}

/// Writes the one line of every input id, in input order, to `output`: only when
/// [`verify`] finds the outputs complete, and atomically (a temporary file in the same directory,
/// flushed to disk, then renamed over `output`), so that `output` is either absent, or the old
/// file, or the whole merge. Returns the report.
pub fn merge(
    input: &Path,
    outputs: &[PathBuf],
    output: &Path,
    force: bool,
) -> Result<Report, MergeError> {
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if let Some(part) = outputs.iter().find(|part| same(part, output)) {
        return Err(MergeError::OutputIsPart(part.clone()));
    }
    if !force && output.exists() {
        return Err(MergeError::OutputExists(output.to_owned()));
    }
    let index = index(input, outputs)?;
    if !index.report.is_complete() {
        return Err(MergeError::Incomplete(Box::new(index.report)));
    }
    let mut report = index.report;
    let directory = match output.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = output
        .file_name()
        .map_or_else(|| "merged".into(), |n| n.to_string_lossy().into_owned());
    let temporary = directory.join(format!(".{name}.merging-{}", std::process::id()));
    let written = (|| {
        let file = File::create(&temporary).map_err(io_error(&temporary))?;
        let mut writer = io::BufWriter::new(file);
        let mut reader = Lines::open(outputs)?;
        for id in &index.order {
            if let [(which, offset, len, _)] = index.lines[id].as_slice() {
                let line = reader.read(*which, *offset, *len)?;
                let is_error = serde_json::from_slice::<Value>(&line)
                    .is_ok_and(|value| value.get("error").is_some_and(|e| !e.is_null()));
                report.errors += usize::from(is_error);
                writer
                    .write_all(&line)
                    .and_then(|()| writer.write_all(b"\n"))
                    .map_err(io_error(&temporary))?;
            }
        }
        let file = writer
            .into_inner()
            .map_err(|e| io_error(&temporary)(e.into_error()))?;
        file.sync_all().map_err(io_error(&temporary))?;
        std::fs::rename(&temporary, output).map_err(io_error(output))
    })();
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(error.into());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn ids_are_those_endorm_score_gives() {
        assert_eq!(input_id(br#"{"id": "a", "prompt": "p"}"#, 3), "\"a\"");
        assert_eq!(input_id(br#"{"prompt": "p"}"#, 3), "3");
        assert_eq!(input_id(b"not json", 4), "4");
        assert_eq!(input_id(b"[1]", 5), "5");
        assert_eq!(input_id(br#"{"id": 7}"#, 1), "7");
    }

    #[test]
    fn good_parts_merge_in_input_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let input = write(
            d,
            "in.jsonl",
            "{\"id\":\"a\"}\n\n{\"x\":1}\nnot json\n{\"id\":9}\n",
        );
        let parts = [
            write(d, "p0", "{\"id\":9,\"s\":1}\n{\"id\":\"a\",\"s\":2}\n"),
            write(
                d,
                "p1",
                "{\"id\":4,\"error\":{\"code\":\"invalid_json\"}}\r\n\n{\"id\":3,\"s\":3}",
            ),
        ];
        let report = verify(&input, &parts).unwrap();
        assert!(report.is_complete(), "{report}");
        assert_eq!((report.input_ids, report.present, report.errors), (4, 4, 1));
        let out = d.join("out.jsonl");
        merge(&input, &parts, &out, false).unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "{\"id\":\"a\",\"s\":2}\n{\"id\":3,\"s\":3}\n\
             {\"id\":4,\"error\":{\"code\":\"invalid_json\"}}\n{\"id\":9,\"s\":1}\n"
        );
        assert!(matches!(
            merge(&input, &parts, &out, false),
            Err(MergeError::OutputExists(_))
        ));
        assert!(matches!(
            merge(&input, &parts, &parts[0], true),
            Err(MergeError::OutputIsPart(_))
        ));
    }

    #[test]
    fn broken_parts_are_reported_by_place_and_not_merged() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let input = write(
            d,
            "in.jsonl",
            "{\"id\":1}\n{\"id\":2}\n{\"id\":3}\n{\"id\":4}\n",
        );
        let parts = [
            write(d, "p0", "{\"id\":1}\n{\"id\":2}\n{\"id\":2}\n[3]\n"),
            write(d, "p1", "{\"id\":9}\n{\"no_id\":1}\n{\"id\":4,\"s\""),
        ];
        let report = verify(&input, &parts).unwrap();
        assert!(!report.is_complete());
        assert_eq!(report.missing, ["3", "4"]);
        assert_eq!(report.duplicates.len(), 1);
        assert_eq!(report.duplicates[0].id, "2");
        let lines: Vec<usize> = report.duplicates[0].places.iter().map(|p| p.line).collect();
        assert_eq!(lines, [2, 3]);
        assert_eq!(report.unknown.len(), 1);
        assert_eq!(
            (report.unknown[0].line, report.unknown[0].id.as_str()),
            (1, "9")
        );
        let bad: Vec<(usize, &str)> = report
            .bad_lines
            .iter()
            .map(|b| (b.place.line, b.why.as_str()))
            .collect();
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert!(bad[0].1.contains("not a JSON object"), "{bad:?}");
        assert!(bad[1].1.contains("without an \"id\""), "{bad:?}");
        assert!(bad[2].1.contains("cut short"), "{bad:?}");
        let text = report.to_string();
        assert!(
            text.contains("p0:2, ") && text.contains("not complete"),
            "{text}"
        );
        let out = d.join("out.jsonl");
        let error = merge(&input, &parts, &out, false).unwrap_err();
        assert!(matches!(error, MergeError::Incomplete(_)), "{error}");
        assert!(!out.exists(), "nothing written");
    }
}
