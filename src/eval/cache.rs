//! Per-item scores kept next to the report, so a rerun or a crash resumes instead of starting over.
//!
//! JSONL: the first line is a header naming what the scores depend on (model, data, principle,
//! judge prompts); every further line is one pass over one item. A header that does not match the
//! run is refused (scores from another model must never be mixed in). A last line cut short by a
//! crash is dropped.
//!
//! The reference pass (`--reference-model`) depends on a second model, which the header does not
//! name (a reference added to an existing cache must keep its records): each of its records names
//! its reference model instead, and a run with another reference passes over them.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::methods::{Pass, PassScores};
use super::EvalError;
use crate::jsonl::open_resumable;

/// What cached scores depend on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The model's id.
    pub model: String,
    /// The model file's size in bytes (a different quantisation of the same name differs).
    pub model_bytes: u64,
    /// A 64-bit FNV-1a hash of the data file.
    pub data_hash: String,
    /// The principle, if any.
    pub principle: Option<String>,
    /// Bumped whenever a method's prompt or layout changes.
    pub methods_version: u32,
    /// The KV cache's key and value types (`q8_0/q8_0`) when not the default f16 ones, which
    /// caches written before this field scored with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_types: Option<String>,
}

/// The model a reference pass scored on, as the header names the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferenceModel {
    /// The model's id.
    pub model: String,
    /// The model file's size in bytes.
    pub model_bytes: u64,
}

/// One line of the cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The pass.
    pub pass: Pass,
    /// The item.
    pub id: String,
    /// The reference pass: the reference model it scored on (other passes: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<ReferenceModel>,
    /// The scores, or why the item could not be scored.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// A pass's result on one item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Scored.
    Scored(PassScores),
    /// The item is invalid for this model (e.g. longer than the context): it stays unscored.
    Error(String),
}

#[derive(Serialize, Deserialize)]
struct Header {
    endorm_eval_cache: Fingerprint,
}

/// An open cache.
#[derive(Debug)]
pub struct Cache {
    file: Option<(PathBuf, File)>,
    records: HashMap<(Pass, String), Outcome>,
}

impl Cache {
    /// A cache that keeps nothing on disk.
    pub fn in_memory() -> Cache {
        Cache {
            file: None,
            records: HashMap::new(),
        }
    }

    /// Opens (or creates) the cache at `path` for a run with `fingerprint` and, for the reference
    /// pass, `reference` (the reference pass's records of any other reference stay in the file,
    /// unused).
    pub fn open(
        path: &Path,
        fingerprint: &Fingerprint,
        reference: Option<&ReferenceModel>,
    ) -> Result<Cache, EvalError> {
        let io = |source| EvalError::Io {
            path: path.to_owned(),
            source,
        };
        let mut records = HashMap::new();
        let mut header_seen = false;
        let mut file = open_resumable(path, io, |line| {
            if header_seen {
                let Ok(record) = serde_json::from_slice::<Record>(line) else {
                    return Ok(false);
                };
                // Kept (accepted), not cut: the file is another run's too.
                if record.pass == Pass::Reference && record.reference.as_ref() != reference {
                    return Ok(true);
                }
                records.insert((record.pass, record.id), record.outcome);
                return Ok(true);
            }
            let Ok(header) = serde_json::from_slice::<Header>(line) else {
                return Ok(false);
            };
            if header.endorm_eval_cache != *fingerprint {
                return Err(EvalError::CacheMismatch {
                    path: path.to_owned(),
                    cached: Box::new(header.endorm_eval_cache),
                    wanted: Box::new(fingerprint.clone()),
                });
            }
            header_seen = true;
            Ok(true)
        })?;
        if !header_seen {
            let header = Header {
                endorm_eval_cache: fingerprint.clone(),
            };
            let line = serde_json::to_string(&header).map_err(|e| EvalError::Io {
                path: path.to_owned(),
                source: e.into(),
            })?;
            writeln!(file, "{line}")
                .and_then(|()| file.flush())
                .map_err(io)?;
        }
        Ok(Cache {
            file: Some((path.to_owned(), file)),
            records,
        })
    }

    /// The cached outcome of `pass` on item `id`.
    pub fn get(&self, pass: Pass, id: &str) -> Option<&Outcome> {
        self.records.get(&(pass, id.to_owned()))
    }

    /// Records an outcome (and writes it through to disk).
    pub fn put(&mut self, record: Record) -> Result<(), EvalError> {
        if let Some((path, file)) = &mut self.file {
            let io = |source| EvalError::Io {
                path: path.clone(),
                source,
            };
            let line = serde_json::to_string(&record).map_err(|e| io(e.into()))?;
            writeln!(file, "{line}")
                .and_then(|()| file.flush())
                .map_err(io)?;
        }
        self.records
            .insert((record.pass, record.id), record.outcome);
        Ok(())
    }

    /// Holds an outcome for this run only, without writing it to disk (for passes too cheap to
    /// be worth caching).
    pub fn hold(&mut self, record: Record) {
        self.records
            .insert((record.pass, record.id), record.outcome);
    }

    /// How many outcomes are held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no outcome is held.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// 64-bit FNV-1a of `bytes`, as 16 hex digits.
pub fn fnv1a(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::methods::Scores;
    use super::*;
    use std::fs::OpenOptions;

    fn fingerprint(model: &str) -> Fingerprint {
        Fingerprint {
            model: model.into(),
            model_bytes: 1,
            data_hash: fnv1a(b"data"),
            principle: None,
            methods_version: 1,
            kv_types: None,
        }
    }

    fn record(id: &str) -> Record {
        Record {
            pass: Pass::Reward,
            id: id.into(),
            reference: None,
            outcome: Outcome::Scored(PassScores {
                scores: BTreeMap::from([("endo".into(), Scores::Candidates(vec![1.5, -2.0]))]),
                tokens: 10,
                seconds: 0.25,
            }),
        }
    }

    #[test]
    fn records_survive_a_reopen_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("items.jsonl");
        let mut cache = Cache::open(&path, &fingerprint("m"), None).unwrap();
        cache.put(record("a")).unwrap();
        cache
            .put(Record {
                pass: Pass::Verifier,
                id: "b".into(),
                reference: None,
                outcome: Outcome::Error("too long".into()),
            })
            .unwrap();
        drop(cache);
        // A crash mid-write leaves half a line.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        write!(file, "{{\"pass\":\"reward\",\"id\":\"c\",\"sco").unwrap();
        drop(file);

        let mut cache = Cache::open(&path, &fingerprint("m"), None).unwrap();
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(Pass::Reward, "a"), Some(&record("a").outcome));
        assert_eq!(
            cache.get(Pass::Verifier, "b"),
            Some(&Outcome::Error("too long".into()))
        );
        assert_eq!(cache.get(Pass::Reward, "c"), None);
        cache.put(record("c")).unwrap();
        drop(cache);
        assert_eq!(
            Cache::open(&path, &fingerprint("m"), None).unwrap().len(),
            3
        );
    }

    #[test]
    fn another_model_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("items.jsonl");
        Cache::open(&path, &fingerprint("m"), None)
            .unwrap()
            .put(record("a"))
            .unwrap();
        assert!(matches!(
            Cache::open(&path, &fingerprint("other"), None),
            Err(EvalError::CacheMismatch { .. })
        ));
    }

    #[test]
    fn other_kv_types_are_refused_and_a_cache_from_before_them_is_f16() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("items.jsonl");
        // A header written before the field: read as the default f16 KV cache.
        let mut header = serde_json::to_value(Header {
            endorm_eval_cache: fingerprint("m"),
        })
        .unwrap();
        assert!(header["endorm_eval_cache"]["kv_types"].is_null());
        header["endorm_eval_cache"]
            .as_object_mut()
            .unwrap()
            .remove("kv_types");
        std::fs::write(&path, format!("{header}\n")).unwrap();
        Cache::open(&path, &fingerprint("m"), None).unwrap();
        let q8 = Fingerprint {
            kv_types: Some("q8_0/q8_0".into()),
            ..fingerprint("m")
        };
        assert!(matches!(
            Cache::open(&path, &q8, None),
            Err(EvalError::CacheMismatch { .. })
        ));
    }

    #[test]
    fn reference_records_serve_only_their_reference_and_stay_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("items.jsonl");
        let small = ReferenceModel {
            model: "small".into(),
            model_bytes: 1,
        };
        let other = ReferenceModel {
            model: "small".into(),
            model_bytes: 2,
        };
        let reference = |of: &ReferenceModel| Record {
            pass: Pass::Reference,
            reference: Some(of.clone()),
            ..record("a")
        };
        let mut cache = Cache::open(&path, &fingerprint("m"), None).unwrap();
        cache.put(record("a")).unwrap();
        cache.put(reference(&small)).unwrap();
        drop(cache);
        // The header is the one an older run wrote: its records all stay valid.
        let mut cache = Cache::open(&path, &fingerprint("m"), Some(&other)).unwrap();
        assert!(cache.get(Pass::Reward, "a").is_some());
        assert_eq!(cache.get(Pass::Reference, "a"), None);
        cache.put(reference(&other)).unwrap();
        drop(cache);
        let cache = Cache::open(&path, &fingerprint("m"), Some(&small)).unwrap();
        assert_eq!(cache.len(), 2);
        assert!(cache.get(Pass::Reference, "a").is_some());
        // No reference at all: the reward record alone; nothing was cut from the file.
        assert_eq!(
            Cache::open(&path, &fingerprint("m"), None).unwrap().len(),
            1
        );
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(lines, 4);
    }

    #[test]
    fn fnv1a_matches_the_reference() {
        assert_eq!(fnv1a(b""), "cbf29ce484222325");
        assert_eq!(fnv1a(b"a"), "af63dc4c8601ec8c");
    }
}
