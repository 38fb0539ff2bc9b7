//! How a model is run: [`ModelSettings`] (`[defaults]` and the settings part of every
//! `[models.NAME]`), the built-in defaults, the one merge into the engine's settings, and the
//! checks of single values and of what a model ends up with.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::{ContextOptions, RpcEndpoint, WorkerSettings};

/// How a model is run: `[defaults]`, and the settings part of every `[models.NAME]`. Every value
/// is optional; an unset one comes from the next layer of [`ModelSettings::merged`] (the command
/// line, then `[models.NAME]`, then `[defaults]`, then [`ModelSettings::BUILT_IN`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSettings {
    /// Context window in tokens [default: the model's trained context, at most 4096].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_ctx: Option<u32>,
    /// Tokens per llama.cpp decode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_batch: Option<u32>,
    /// CPU threads [default: one per core].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_threads: Option<u32>,
    /// Layers offloaded to the GPU; with `rpc`, to the RPC workers, 0 meaning all of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_gpu_layers: Option<u32>,
    /// ggml RPC workers (`endorm rpc-worker`, `HOST:PORT`) that hold the model's offloaded layers
    /// (docs/SCALE.md); `[]` in a model's entry runs it on this machine alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpc: Option<Vec<RpcEndpoint>>,
    /// Candidates decoded side by side.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sequences: Option<u32>,
    /// Recent contexts kept in the prefix cache (0: off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_slots: Option<u32>,
    /// Most tokens the prefix cache keeps besides the last request's context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_tokens: Option<u32>,
    /// Score queued requests together in one pass (continuous batching).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batching: Option<bool>,
    /// System message for chat requests that name no `principle`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principle: Option<String>,
}

impl ModelSettings {
    /// The built-in defaults, the one place they are written. `n_ctx` and `n_threads` stay unset:
    /// the engine sizes them for the model (its trained context, at most 4096) and the machine
    /// (one thread per core).
    pub const BUILT_IN: ModelSettings = ModelSettings {
        n_ctx: None,
        n_batch: Some(ContextOptions::N_BATCH),
        n_threads: None,
        n_gpu_layers: Some(0),
        rpc: None,
        max_sequences: Some(ContextOptions::MAX_SEQUENCES),
        cache_slots: Some(ContextOptions::CACHE_SLOTS),
        cache_tokens: Some(ContextOptions::CACHE_TOKENS),
        batching: Some(false),
        principle: None,
    };

    /// Each value from the first of `layers` that sets it, else from [`ModelSettings::BUILT_IN`]:
    /// the one merge of model settings. The daemon's layers are `serve`'s flags, the model's
    /// `[models.NAME]` and `[defaults]`; the offline commands' are their flags alone.
    pub fn merged(layers: &[&ModelSettings]) -> ModelSettings {
        let built_in = ModelSettings::BUILT_IN;
        let mut merged = ModelSettings::default();
        for layer in layers.iter().copied().chain([&built_in]) {
            let ModelSettings {
                n_ctx,
                n_batch,
                n_threads,
                n_gpu_layers,
                rpc,
                max_sequences,
                cache_slots,
                cache_tokens,
                batching,
                principle,
            } = layer;
            merged.n_ctx = merged.n_ctx.or(*n_ctx);
            merged.n_batch = merged.n_batch.or(*n_batch);
            merged.n_threads = merged.n_threads.or(*n_threads);
            merged.n_gpu_layers = merged.n_gpu_layers.or(*n_gpu_layers);
            merged.rpc = merged.rpc.take().or_else(|| rpc.clone());
            merged.max_sequences = merged.max_sequences.or(*max_sequences);
            merged.cache_slots = merged.cache_slots.or(*cache_slots);
            merged.cache_tokens = merged.cache_tokens.or(*cache_tokens);
            merged.batching = merged.batching.or(*batching);
            merged.principle = merged.principle.take().or_else(|| principle.clone());
        }
        merged
    }

    /// What the engine loads for the model file `path`: these settings over the built-in defaults
    /// ([`ModelSettings::merged`]). Values still unset (`n_ctx`, `n_threads`) are left to the
    /// engine, which sizes them for the model and the machine.
    pub fn worker(
        &self,
        path: &Path,
        chat_template: Option<String>,
        queue_depth: usize,
    ) -> WorkerSettings {
        let merged = ModelSettings::merged(&[self]);
        WorkerSettings {
            path: path.to_owned(),
            n_gpu_layers: merged.n_gpu_layers.unwrap_or_default(),
            rpc: merged.rpc.unwrap_or_default(),
            chat_template,
            n_ctx: merged.n_ctx,
            n_batch: merged.n_batch,
            n_threads: merged.n_threads,
            max_sequences: merged.max_sequences,
            cache_slots: merged.cache_slots,
            cache_tokens: merged.cache_tokens,
            batching: merged.batching.unwrap_or_default(),
            queue_depth,
        }
    }

    /// Whether no value is set.
    pub fn is_empty(&self) -> bool {
        *self == ModelSettings::default()
    }
}

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
             (cache_slots = {cache_slots}, counted as at least 1): raise n_batch or lower \
             cache_slots"
        ));
    }
    Ok(())
}
