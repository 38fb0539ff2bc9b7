//! A model's entry in the config, `[models.NAME]` (its file and the engine's [`ModelSettings`]
//! over `[defaults]`), and the checks of single values and of what a model ends up with.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::engine::{ContextOptions, ModelSettings};

/// `[models.NAME]`: a model file, and how to run it (as in `[defaults]`, over it).
///
/// Read through a table: serde's `deny_unknown_fields` does not work with `flatten`, and a
/// flattened struct's type errors would not name their key. [`ModelSettings`] refuses unknown
/// keys by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "toml::Table")]
pub struct ModelConfig {
    /// The GGUF file; `~/` is the home directory, a relative path is relative to the config file.
    pub path: PathBuf,
    /// A Jinja chat template that replaces the GGUF's; `""` disables chat format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    /// Another served model whose reward `/v1/score` subtracts, on the same tokens, unless a
    /// request names its own `reference_model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_model: Option<String>,
    /// Its own settings.
    #[serde(flatten)]
    pub settings: ModelSettings,
}

impl TryFrom<toml::Table> for ModelConfig {
    type Error = String;

    fn try_from(mut table: toml::Table) -> Result<Self, String> {
        fn take<T: serde::de::DeserializeOwned>(
            table: &mut toml::Table,
            key: &str,
        ) -> Result<Option<T>, String> {
            let value = table.remove(key).map(toml::Value::try_into).transpose();
            value.map_err(|e| format!("{}\nin `{key}`", e.to_string().trim_end()))
        }
        let path = take(&mut table, "path")?.ok_or("missing key `path` (the model's GGUF file)")?;
        let chat_template = take(&mut table, "chat_template")?;
        let reference_model = take(&mut table, "reference_model")?;
        let settings = toml::Value::Table(table).try_into().map_err(|e| {
            let e = toml::de::Error::to_string(&e);
            if e.starts_with("unknown field") {
                format!(
                    "{} (and `path`, `chat_template`, `reference_model`)",
                    e.trim_end()
                )
            } else {
                e
            }
        })?;
        Ok(ModelConfig {
            path,
            chat_template,
            reference_model,
            settings,
        })
    }
}
/// The checks of each value on its own, in the section that sets it.
pub(super) fn check_settings(section: &str, settings: &ModelSettings) -> Result<(), String> {
    for (name, value) in [
        ("n_ctx", settings.n_ctx),
        ("n_batch", settings.n_batch),
        ("n_threads", settings.n_threads),
        ("max_sequences", settings.max_sequences),
    ] {
        if value == Some(0) {
            return Err(format!("{section} {name} must be at least 1"));
        }
    }
    if settings.cache_slots.is_some_and(|n| n > 128) {
        return Err(format!("{section} cache_slots must be at most 128"));
    }
    if settings.max_sequences.is_some_and(|n| n > 255) {
        return Err(format!(
            "{section} max_sequences must be at most 255 (llama.cpp's limit)"
        ));
    }
    Ok(())
}

/// The checks across values, on what one model gets in the end ([`ModelSettings::merged`]).
pub(super) fn check_merged(section: &str, settings: &ModelSettings) -> Result<(), String> {
    let cache_slots = settings.cache_slots.unwrap_or_default();
    if settings.batching == Some(true) && cache_slots > 0 {
        return Err(format!(
            "{section}: batching = true does nothing with cache_slots = {cache_slots} (continuous \
             batching needs the prefix cache off): set cache_slots = 0 to batch, or batching = \
             false to keep the prefix cache"
        ));
    }
    let n_batch = settings.n_batch.unwrap_or_default();
    let reserved = ContextOptions::reserved_sequences(cache_slots);
    if n_batch <= reserved {
        return Err(format!(
            "{section}: n_batch = {n_batch} must be larger than cache_slots + 1 = {reserved} \
             (cache_slots = {cache_slots}, counted as at least 2: a long context's slot and one for \
             another client's job between its slices): raise n_batch or lower \
             cache_slots"
        ));
    }
    Ok(())
}
