//! Evaluation files: JSONL, one item a line, either all preference items or all ranking items.
//!
//! * Preference: `{"id", "prompt", "chosen", "rejected"}`; `chosen` and `rejected` are each a
//!   string or a list of strings (every chosen × rejected pair is compared, as in RM-Bench).
//! * Ranking: `{"task_id", "prompt", "completions": [...], "passed": [...]}`: completions of
//!   `prompt` with their labels (code and its tests, a math answer and its check). `"format":
//!   "raw"` (the default: `prompt` is the text the completions continue, as for code) or `"chat"`
//!   (`prompt` is the user's message and each completion the assistant's answer).
//!
//! An item without an id is named by its line number.

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::EvalError;
use crate::api::Format;

/// One preference item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferenceItem {
    /// The item's id.
    pub id: String,
    /// The user's request.
    pub prompt: String,
    /// The better responses.
    pub chosen: Vec<String>,
    /// The worse responses.
    pub rejected: Vec<String>,
}

/// One ranking task: completions of a prompt and whether each passed its tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankingItem {
    /// The task's id.
    pub id: String,
    /// The text every completion continues (`Raw`), or the user's message (`Chat`).
    pub prompt: String,
    /// How the prompt and the completions are laid out.
    pub format: Format,
    /// The completions.
    pub completions: Vec<String>,
    /// Whether each completion passed.
    pub passed: Vec<bool>,
}

/// The items of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dataset {
    /// Chosen versus rejected responses.
    Preference(Vec<PreferenceItem>),
    /// Completions with pass/fail labels.
    Ranking(Vec<RankingItem>),
}

impl Dataset {
    /// `preference` or `ranking`.
    pub fn kind(&self) -> &'static str {
        match self {
            Dataset::Preference(_) => "preference",
            Dataset::Ranking(_) => "ranking",
        }
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        match self {
            Dataset::Preference(items) => items.len(),
            Dataset::Ranking(items) => items.len(),
        }
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the first `n` items.
    pub fn truncate(&mut self, n: usize) {
        match self {
            Dataset::Preference(items) => items.truncate(n),
            Dataset::Ranking(items) => items.truncate(n),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(text) => vec![text],
            OneOrMany::Many(texts) => texts,
        }
    }
}

#[derive(Deserialize)]
struct Line {
    id: Option<Value>,
    task_id: Option<Value>,
    prompt: Option<String>,
    chosen: Option<OneOrMany>,
    rejected: Option<OneOrMany>,
    completions: Option<Vec<String>>,
    passed: Option<Vec<bool>>,
    format: Option<Format>,
}

enum Item {
    Preference(PreferenceItem),
    Ranking(RankingItem),
}

/// Reads an evaluation file.
pub fn load(path: &Path) -> Result<Dataset, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse(&text).map_err(|(line, message)| EvalError::Data {
        path: path.to_owned(),
        line,
        message,
    })
}

/// Parses the text of an evaluation file; an error names its 1-based line.
pub fn parse(text: &str) -> Result<Dataset, (usize, String)> {
    let mut preference = Vec::new();
    let mut ranking = Vec::new();
    let mut ids = HashSet::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let item = parse_line(line, number).map_err(|message| (number, message))?;
        let id = match &item {
            Item::Preference(item) => item.id.clone(),
            Item::Ranking(item) => item.id.clone(),
        };
        if !ids.insert(id.clone()) {
            return Err((number, format!("id {id} appears more than once")));
        }
        match item {
            Item::Preference(item) => preference.push(item),
            Item::Ranking(item) => ranking.push(item),
        }
        if !preference.is_empty() && !ranking.is_empty() {
            return Err((
                number,
                "the file mixes preference and ranking items: use one kind per file".into(),
            ));
        }
    }
    match (preference.is_empty(), ranking.is_empty()) {
        (true, true) => Err((0, "the file holds no items".into())),
        (false, _) => Ok(Dataset::Preference(preference)),
        (_, false) => Ok(Dataset::Ranking(ranking)),
    }
}

fn parse_line(line: &str, number: usize) -> Result<Item, String> {
    let line: Line =
        serde_json::from_str(line).map_err(|e| format!("not an evaluation item: {e}"))?;
    let id = match line.id.or(line.task_id) {
        None => number.to_string(),
        Some(Value::String(id)) => id,
        Some(other) => other.to_string(),
    };
    let prompt = line.prompt.ok_or("missing `prompt`")?;
    match (line.chosen, line.rejected, line.completions, line.passed) {
        (Some(_), Some(_), None, None) if line.format.is_some_and(|f| f != Format::Chat) => {
            Err("preference items are scored in chat format: `format` can only be \"chat\"".into())
        }
        (Some(chosen), Some(rejected), None, None) => {
            let (chosen, rejected) = (chosen.into_vec(), rejected.into_vec());
            if chosen.is_empty() || rejected.is_empty() {
                return Err("`chosen` and `rejected` need at least one response each".into());
            }
            Ok(Item::Preference(PreferenceItem {
                id,
                prompt,
                chosen,
                rejected,
            }))
        }
        (None, None, Some(completions), Some(passed)) => {
            if completions.is_empty() {
                return Err("`completions` is empty".into());
            }
            if completions.len() != passed.len() {
                return Err(format!(
                    "{} completions but {} `passed` labels",
                    completions.len(),
                    passed.len()
                ));
            }
            Ok(Item::Ranking(RankingItem {
                id,
                prompt,
                format: line.format.unwrap_or(Format::Raw),
                completions,
                passed,
            }))
        }
        _ => Err("an item has either `chosen` and `rejected` (preference) or `completions` and `passed` (ranking)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preference_items_take_strings_or_lists() {
        let text = r#"{"id": "a", "prompt": "p", "chosen": "c", "rejected": ["r1", "r2"]}

{"prompt": "q", "chosen": ["c"], "rejected": "r"}"#;
        let Ok(Dataset::Preference(items)) = parse(text) else {
            panic!("not a preference file")
        };
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].rejected, vec!["r1", "r2"]);
        assert_eq!(
            items[1].id, "3",
            "an item without an id is named by its line"
        );
    }

    #[test]
    fn ranking_items_need_one_label_per_completion() {
        let good = r#"{"task_id": "t/0", "prompt": "def f():\n", "completions": ["  return 1\n", "  pass\n"], "passed": [true, false]}"#;
        let Ok(Dataset::Ranking(items)) = parse(good) else {
            panic!("not a ranking file")
        };
        assert_eq!(
            (items[0].id.as_str(), items[0].format),
            ("t/0", Format::Raw)
        );
        let chat = r#"{"task_id": "m", "prompt": "2+2?", "format": "chat", "completions": ["4"], "passed": [true]}"#;
        let Ok(Dataset::Ranking(items)) = parse(chat) else {
            panic!("not a ranking file")
        };
        assert_eq!(items[0].format, Format::Chat);
        let raw_preference =
            r#"{"id": 1, "prompt": "p", "format": "raw", "chosen": "c", "rejected": "r"}"#;
        assert!(parse(raw_preference).unwrap_err().1.contains("chat format"));
        let bad = r#"{"task_id": 1, "prompt": "x", "completions": ["a", "b"], "passed": [true]}"#;
        assert_eq!(parse(bad).unwrap_err().0, 1);
    }

    #[test]
    fn mixed_duplicate_and_malformed_files_are_refused() {
        let mixed = r#"{"id": 1, "prompt": "p", "chosen": "c", "rejected": "r"}
{"task_id": 2, "prompt": "p", "completions": ["a"], "passed": [true]}"#;
        assert_eq!(parse(mixed).unwrap_err().0, 2);
        let duplicate = r#"{"id": 1, "prompt": "p", "chosen": "c", "rejected": "r"}
{"id": 1, "prompt": "p", "chosen": "c", "rejected": "r"}"#;
        assert!(parse(duplicate).unwrap_err().1.contains("more than once"));
        assert!(parse(r#"{"id": 1, "prompt": "p", "chosen": "c"}"#).is_err());
        assert!(parse(r#"{"id": 1, "prompt": "p", "chosen": [], "rejected": "r"}"#).is_err());
        assert!(parse("not json").is_err());
        assert!(parse("\n\n").is_err());
    }
}
