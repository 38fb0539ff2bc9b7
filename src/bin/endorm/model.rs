//! The flags every command that runs a model shares (`--model` and the model settings), and
//! loading the model they name.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use clap::Args;

use endorm::catalog;
use endorm::config::ModelSettings;
use endorm::engine::{ContextOptions, KvType, Model, RpcEndpoint};
use endorm::paths;

#[derive(Args)]
pub struct ModelArgs {
    /// GGUF model file, or a catalogue name (`endorm pull --list`) [default: SmolLM2-135M-Instruct
    /// in the model directory]
    #[arg(long, short, value_name = "PATH|NAME")]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// The per-model flags of every command that runs a model. With `serve` they override every
/// served model's settings (over the config); elsewhere they override the built-in defaults.
#[derive(Args)]
pub struct SettingsArgs {
    /// Context window in tokens [default: the model's trained context, at most 4096]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    n_ctx: Option<u32>,
    /// CPU threads [default: one per core]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    threads: Option<u32>,
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), help = built_in_help(
        "Tokens per llama.cpp decode",
        ModelSettings::BUILT_IN.n_batch,
    ))]
    n_batch: Option<u32>,
    #[arg(long, help = built_in_help(
        "Layers to offload to the GPU (builds with --features cuda/metal/vulkan)",
        ModelSettings::BUILT_IN.n_gpu_layers,
    ))]
    n_gpu_layers: Option<u32>,
    /// ggml RPC workers (`endorm rpc-worker`), comma-separated HOST:PORT: the model's layers are
    /// split over them (all layers unless --n-gpu-layers says how many). No authentication:
    /// docs/SCALE.md.
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT,...")]
    rpc: Option<Vec<RpcEndpoint>>,
    /// Decode a beginning that several candidates of a request share once (the prefix tree);
    /// `false` decodes every candidate in full, for comparison [default: true]
    #[arg(long, value_name = "BOOL")]
    prefix_tree: Option<bool>,
    /// How the KV cache stores keys: f16, bf16 or q8_0; q8_0 for both keeps a text's values the
    /// same whatever else is in the request, slower on long contexts [default: f16]
    #[arg(long)]
    type_k: Option<KvType>,
    /// How the KV cache stores values: f16, bf16 or q8_0 [default: f16]
    #[arg(long)]
    type_v: Option<KvType>,
}

impl SettingsArgs {
    /// The settings these flags set.
    pub fn settings(&self) -> ModelSettings {
        ModelSettings {
            n_ctx: self.n_ctx,
            n_threads: self.threads,
            n_batch: self.n_batch,
            n_gpu_layers: self.n_gpu_layers,
            rpc: self.rpc.clone(),
            prefix_tree: self.prefix_tree,
            type_k: self.type_k,
            type_v: self.type_v,
            ..ModelSettings::default()
        }
    }
}

fn built_in_help(what: &str, default: Option<u32>) -> String {
    match default {
        Some(value) => format!("{what} [default: {value}]"),
        None => what.to_owned(),
    }
}

impl ModelArgs {
    /// The model file: `--model` (a path, or a catalogue name for its file in the model
    /// directory), else the default model in the model directory.
    pub fn path(&self) -> Result<PathBuf> {
        if let Some(arg) = &self.model {
            let path = catalog::resolve(arg);
            if let Some(entry) = catalog::lookup(arg).filter(|_| !path.exists()) {
                bail!(
                    "{} is not installed (no file at {}): run `{}`",
                    entry.name,
                    path.display(),
                    entry.pull_hint()
                );
            }
            return Ok(path);
        }
        let path =
            paths::default_model().context("no home directory to find the default model in")?;
        if !path.is_file() {
            bail!(
                "no model given and the default model is not installed at {}: run `endorm pull`, \
                 or pass --model PATH",
                path.display()
            );
        }
        Ok(path)
    }

    /// The model with these flags' settings, and its context options.
    pub fn load(&self) -> Result<(Model, ContextOptions)> {
        self.settings.load(&self.path()?)
    }
}

impl SettingsArgs {
    /// The model at `path` with these settings (over the built-in defaults), and its context
    /// options.
    pub fn load(&self, path: &Path) -> Result<(Model, ContextOptions)> {
        let settings = self.settings();
        if settings.rpc.as_ref().is_some_and(|rpc| !rpc.is_empty()) {
            // A lost worker aborts this process (ggml cannot go on without it): one line and exit
            // status 70 instead of a core dump; `endorm score --resume` picks up after it.
            endorm::engine::quiet_aborts();
        }
        let model = Model::load(path, &settings.model_options(None))?;
        let context = settings.context_options(model.meta().n_ctx_train);
        Ok((model, context))
    }
}
