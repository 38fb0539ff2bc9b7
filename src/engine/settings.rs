//! How a model is run, resolved once: [`ModelSettings`] is one layer of optional overrides (the
//! command line, a config's `[models.NAME]` or `[defaults]`), [`ModelSettings::merged`] stacks
//! layers over [`ModelSettings::BUILT_IN`], and the merged settings give the two things llama.cpp
//! is handed: [`ModelSettings::model_options`] to load the file and
//! [`ModelSettings::context_options`] to size the context, where the defaults that depend on the
//! model and the machine (the trained context, the cores) are applied too.

use serde::{Deserialize, Serialize};

use super::{ContextOptions, KvType, ModelOptions, RpcEndpoint};

/// How a model is run. Every value is optional: an unset one comes from the next layer of
/// [`ModelSettings::merged`], then from [`ModelSettings::BUILT_IN`].
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
    /// Decode a beginning that several candidates of a request share once (the prefix tree).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_tree: Option<bool>,
    /// How the KV cache stores keys (`f16`, `bf16`, `q8_0`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub type_k: Option<KvType>,
    /// How the KV cache stores values (`f16`, `bf16`, `q8_0`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub type_v: Option<KvType>,
    /// System message for chat requests that name no `principle`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principle: Option<String>,
}

/// The largest context window chosen when none is configured.
const MAX_DEFAULT_N_CTX: u32 = 4096;

impl ModelSettings {
    /// The built-in defaults, the one place they are written. `n_ctx` and `n_threads` stay unset:
    /// [`ModelSettings::context_options`] sizes them for the model (its trained context, at most
    /// 4096) and the machine (one thread per core).
    pub const BUILT_IN: ModelSettings = ModelSettings {
        n_ctx: None,
        n_batch: Some(512),
        n_threads: None,
        n_gpu_layers: Some(0),
        rpc: None,
        max_sequences: Some(64),
        cache_slots: Some(0),
        cache_tokens: Some(4096),
        batching: Some(false),
        prefix_tree: Some(true),
        type_k: Some(KvType::F16),
        type_v: Some(KvType::F16),
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
                prefix_tree,
                type_k,
                type_v,
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
            merged.prefix_tree = merged.prefix_tree.or(*prefix_tree);
            merged.type_k = merged.type_k.or(*type_k);
            merged.type_v = merged.type_v.or(*type_v);
            merged.principle = merged.principle.take().or_else(|| principle.clone());
        }
        merged
    }

    /// Whether no value is set.
    pub fn is_empty(&self) -> bool {
        *self == ModelSettings::default()
    }

    /// How llama.cpp loads the model file with these settings (over the built-in defaults) and
    /// `chat_template` (a Jinja template that replaces the GGUF's; empty: none).
    pub fn model_options(&self, chat_template: Option<String>) -> ModelOptions {
        let merged = ModelSettings::merged(&[self]);
        ModelOptions {
            n_gpu_layers: merged.n_gpu_layers.unwrap_or_default(),
            rpc: merged.rpc.unwrap_or_default(),
            chat_template,
            use_mmap: false,
        }
    }

    /// The context of a model trained on `n_ctx_train` tokens, with these settings over the
    /// built-in defaults and, for what is still unset, the model's trained context (at least 256,
    /// at most 4096) and one thread per core. A configured `n_ctx` beyond the trained context is
    /// cut to it, with a warning: the model was never trained on such positions, and the KV cache
    /// of `n_ctx = 1000000` alone takes gigabytes.
    pub fn context_options(&self, n_ctx_train: u32) -> ContextOptions {
        let merged = ModelSettings::merged(&[self]);
        let built_in = |value: Option<u32>| value.unwrap_or_default();
        let trained = n_ctx_train.max(256);
        let n_ctx = match merged.n_ctx {
            Some(n_ctx) if n_ctx > trained => {
                tracing::warn!(
                    n_ctx,
                    n_ctx_train = trained,
                    "n_ctx is more than the model's trained context: using {trained}"
                );
                trained
            }
            Some(n_ctx) => n_ctx,
            None => n_ctx_train.clamp(256, MAX_DEFAULT_N_CTX),
        };
        ContextOptions {
            n_ctx,
            n_batch: built_in(merged.n_batch),
            n_threads: merged.n_threads.unwrap_or_else(default_threads),
            max_sequences: built_in(merged.max_sequences),
            cache_slots: built_in(merged.cache_slots),
            cache_tokens: built_in(merged.cache_tokens),
            prefix_tree: merged.prefix_tree.unwrap_or(true),
            type_k: merged.type_k.unwrap_or(KvType::F16),
            type_v: merged.type_v.unwrap_or(KvType::F16),
        }
    }

    /// Whether queued requests are scored together.
    pub fn batches(&self) -> bool {
        ModelSettings::merged(&[self]).batching.unwrap_or_default()
    }
}

/// One thread per core.
pub fn default_threads() -> u32 {
    std::thread::available_parallelism().map_or(4, |n| n.get() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_layer_that_sets_a_value_wins_over_later_ones_and_the_built_in() {
        let flags = ModelSettings {
            n_batch: Some(63),
            ..ModelSettings::default()
        };
        let model = ModelSettings {
            n_batch: Some(128),
            n_ctx: Some(1024),
            ..ModelSettings::default()
        };
        let merged = ModelSettings::merged(&[&flags, &model]);
        assert_eq!(merged.n_batch, Some(63));
        assert_eq!(merged.n_ctx, Some(1024));
        assert_eq!(merged.max_sequences, ModelSettings::BUILT_IN.max_sequences);
    }

    #[test]
    fn an_unset_context_is_the_trained_one_within_256_to_4096() {
        let none = ModelSettings::default();
        assert_eq!(none.context_options(8192).n_ctx, 4096);
        assert_eq!(none.context_options(2048).n_ctx, 2048);
        assert_eq!(none.context_options(100).n_ctx, 256);
        let set = ModelSettings {
            n_ctx: Some(512),
            ..ModelSettings::default()
        };
        assert_eq!(set.context_options(8192).n_ctx, 512);
        let beyond = ModelSettings {
            n_ctx: Some(u32::MAX),
            ..ModelSettings::default()
        };
        assert_eq!(
            beyond.context_options(8192).n_ctx,
            8192,
            "cut to the trained context"
        );
        assert_eq!(none.context_options(8192).n_batch, 512);
        assert_eq!(none.context_options(8192).n_threads, default_threads());
    }

    #[test]
    fn load_options_come_from_the_same_merge() {
        let settings = ModelSettings {
            n_gpu_layers: Some(99),
            ..ModelSettings::default()
        };
        let options = settings.model_options(Some(String::new()));
        assert_eq!(options.n_gpu_layers, 99);
        assert!(options.rpc.is_empty());
        assert_eq!(options.chat_template.as_deref(), Some(""));
        assert!(!options.use_mmap);
    }
}
