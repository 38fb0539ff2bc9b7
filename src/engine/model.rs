//! A loaded GGUF model: metadata, tokenizer and chat template. Read-only once loaded, so one `Model`
//! can be shared by every scorer (context) built on it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token_type::LlamaTokenAttr;

use super::device::{self, Placement};
use super::rpc::{self, RpcEndpoint};
use super::special::{Special, SpecialTokens};
use super::template::ChatTemplate;
use super::{backend, cancel, cpu_kernels, gguf, loadlog, EngineError, Token};
use crate::reward::Baseline;

/// The longest text endorm tokenizes; llama.cpp counts tokens in an `i32`.
const MAX_TEXT_BYTES: usize = (i32::MAX / 4) as usize;

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct ModelOptions {
    /// Layers to offload to the GPU (more than the model has: all of them); with `rpc`, to the RPC
    /// workers and the GPUs, where 0 means every layer. Without a GPU every layer stays on the
    /// CPU, with a warning.
    pub n_gpu_layers: u32,
    /// ggml RPC workers (`endorm rpc-worker`) that hold the offloaded layers, split in proportion
    /// to the memory each reports free.
    pub rpc: Vec<RpcEndpoint>,
    /// A Jinja chat template to use instead of the one in the GGUF; an empty string means none
    /// (chat format is then refused, as for a model that ships no template).
    pub chat_template: Option<String>,
    /// Memory-map the GGUF instead of reading it into memory. Off by default: a mapped file that
    /// is truncated on disk kills the process with SIGBUS, and one overwritten in place changes
    /// the weights under a running model (docs/RELIABILITY.md, "Model files").
    pub use_mmap: bool,
}

/// What a model is: sizes and capabilities, read from the GGUF at load.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelInfo {
    /// Context length the model was trained with.
    pub n_ctx_train: u32,
    /// Vocabulary size.
    pub n_vocab: u32,
    /// Number of parameters.
    pub n_params: u64,
    /// Size of the weights in bytes.
    pub size_bytes: u64,
    /// Whether a chat template is available (from the GGUF or an override).
    pub chat_template: bool,
    /// The GGUF file.
    pub path: PathBuf,
    /// The CPU kernels that compute it ([`cpu_kernels`]).
    pub cpu: String,
    /// Where its layers and KV cache are.
    pub placement: Placement,
}

/// A GGUF model loaded through llama.cpp (read into memory, unless `use_mmap`).
pub struct Model {
    llama: LlamaModel,
    meta: ModelInfo,
    template: Option<ChatTemplate>,
    end_of_generation: Option<Token>,
    special: SpecialTokens,
    /// llama.cpp's lines of where the weights went (`loadlog.rs`), for a model on RPC workers.
    placement_log: Vec<String>,
    /// The typical reward per token of `endo_lc`, once measured ([`Scorer::baseline`]).
    ///
    /// [`Scorer::baseline`]: super::Scorer::baseline
    baseline: OnceLock<Baseline>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Loads the GGUF at `path`.
    pub fn load(path: &Path, options: &ModelOptions) -> Result<Model, EngineError> {
        Model::load_as(path, options, false)
    }

    /// The tokenizer, chat template and metadata of the GGUF at `path` without its weights: what
    /// the daemon keeps of a model whose weights another process holds (an RPC model, `host.rs`),
    /// with the sizes llama.cpp reads only with the weights (`n_ctx_train`, `n_params`,
    /// `size_bytes`) as that process reports them.
    pub(super) fn load_vocabulary(
        path: &Path,
        options: &ModelOptions,
        sizes: &ModelInfo,
    ) -> Result<Model, EngineError> {
        let mut model = Model::load_as(path, options, true)?;
        model.meta.n_ctx_train = sizes.n_ctx_train;
        model.meta.n_params = sizes.n_params;
        model.meta.size_bytes = sizes.size_bytes;
        Ok(model)
    }

    /// llama.cpp's log lines of where the weights went (layers and buffers per device).
    pub(super) fn placement_log(&self) -> &[String] {
        &self.placement_log
    }

    fn load_as(
        path: &Path,
        options: &ModelOptions,
        vocab_only: bool,
    ) -> Result<Model, EngineError> {
        let not_loaded = |reason: String| EngineError::Load {
            path: path.to_owned(),
            reason,
        };
        if !path.is_file() {
            return Err(not_loaded("no such file".into()));
        }
        gguf::check_header(path).map_err(not_loaded)?;
        let backend = backend()?;
        // Workers holding no layer would be idle: with workers, 0 (the default) offloads all.
        let n_gpu_layers = match options.n_gpu_layers {
            0 if !options.rpc.is_empty() => u32::MAX,
            n => n,
        };
        let mut params = LlamaModelParams::default()
            .with_n_gpu_layers(n_gpu_layers)
            .with_use_mmap(options.use_mmap)
            .with_vocab_only(vocab_only);
        let workers = if vocab_only {
            &[][..]
        } else {
            &options.rpc[..]
        };
        // The devices are named to llama.cpp even where its default would pick the same ones, so
        // that the placement reported is the one asked for. A vocabulary alone needs none.
        let devices = match rpc::devices(workers).map_err(not_loaded)? {
            Some(indices) => device::at(&indices),
            None if vocab_only => Vec::new(),
            None => {
                let _registry = rpc::registry_read();
                device::local_gpus()
            }
        };
        if !devices.is_empty() {
            let indices: Vec<usize> = devices.iter().map(|d| d.index).collect();
            params = params
                .with_devices(&indices)
                .map_err(|e| not_loaded(e.to_string()))?;
        }
        let (loaded, log) = loadlog::capture(|| {
            let _registry = rpc::registry_read();
            LlamaModel::load_from_file(backend, path, &params)
        });
        let llama = loaded.map_err(|e| {
            not_loaded(if log.problems.is_empty() {
                format!("{e} (is it a GGUF file llama.cpp supports?)")
            } else {
                format!("{} (llama.cpp: {e})", log.problems.join("; "))
            })
        })?;
        let placement = Placement::new(&devices, n_gpu_layers, llama.n_layer());
        if let Some(warning) = placement.fallback_warning() {
            tracing::warn!(path = %path.display(), "{warning}");
        }
        if !workers.is_empty() {
            let workers: Vec<&str> = options.rpc.iter().map(RpcEndpoint::as_str).collect();
            // One line per layer is for /v1/models (`host.rs`), not the log.
            let summary: Vec<&str> = log
                .placement
                .iter()
                .map(String::as_str)
                .filter(|line| !line.contains("assigned to device"))
                .collect();
            tracing::info!(
                path = %path.display(),
                workers = %workers.join(","),
                "model placed (llama.cpp counts the RPC workers' layers as GPU layers): {}",
                summary.join("; ")
            );
        }

        let vocab = llama.vocab();
        let piece = |token: LlamaToken| {
            if token.0 >= 0 && token.0 < vocab.n_tokens() {
                String::from_utf8_lossy(&vocab.token_to_piece(token, true, None)).into_owned()
            } else {
                String::new()
            }
        };
        let template_source = match &options.chat_template {
            Some(source) => Some(source.clone()),
            None => llama.meta_val_str("tokenizer.chat_template").ok(),
        };
        let template = template_source
            .filter(|source| !source.is_empty())
            .map(|source| ChatTemplate::new(&source, piece(vocab.bos()), piece(vocab.eos())))
            .transpose()
            .map_err(|e| not_loaded(format!("its chat template does not compile: {e}")))?;
        let end_of_generation = [vocab.eos(), vocab.eot()]
            .into_iter()
            .find(|&t| t.0 >= 0 && t.0 < vocab.n_tokens() && vocab.is_eog(t))
            .map(|t| Token(t.0));

        let special = SpecialTokens::new(
            (0..vocab.n_tokens())
                .map(LlamaToken)
                .filter_map(|token| {
                    let attr = vocab.attr(token);
                    let special = LlamaTokenAttr::Control
                        | LlamaTokenAttr::UserDefined
                        | LlamaTokenAttr::Unknown;
                    attr.intersects(special).then(|| Special {
                        text: String::from_utf8_lossy(&vocab.token_to_piece(token, true, None))
                            .into_owned(),
                        lstrip: attr.contains(LlamaTokenAttr::LStrip),
                        rstrip: attr.contains(LlamaTokenAttr::RStrip),
                    })
                })
                .collect(),
        );
        let meta = ModelInfo {
            n_ctx_train: llama.n_ctx_train(),
            n_vocab: u32::try_from(vocab.n_tokens()).unwrap_or(0),
            n_params: llama.n_params(),
            size_bytes: llama.size(),
            chat_template: template.is_some(),
            path: path.to_owned(),
            cpu: cpu_kernels()?.to_owned(),
            placement,
        };
        Ok(Model {
            llama,
            meta,
            template,
            end_of_generation,
            special,
            placement_log: log.placement,
            baseline: OnceLock::new(),
        })
    }

    /// Whether `text` holds the text of one of the vocabulary's special tokens (`<|im_end|>`).
    pub fn has_special_text(&self, text: &str) -> bool {
        self.special.occurs_in(text)
    }

    /// The model's `endo_lc` baseline, once measured on a context of it ([`Scorer::baseline`]).
    ///
    /// [`Scorer::baseline`]: super::Scorer::baseline
    pub fn baseline(&self) -> Option<Baseline> {
        self.baseline.get().copied()
    }

    /// Records the baseline measured on a context of this model (here, or in the process that
    /// holds its weights); the first one measured stays.
    pub(super) fn set_baseline(&self, baseline: Baseline) -> Baseline {
        *self.baseline.get_or_init(|| baseline)
    }

    /// Sizes and capabilities.
    pub fn meta(&self) -> &ModelInfo {
        &self.meta
    }

    /// The llama.cpp model, for building contexts.
    pub(super) fn llama(&self) -> &LlamaModel {
        &self.llama
    }

    /// The chat template the GGUF carries, as Jinja source.
    pub fn template_source(&self) -> Option<String> {
        self.llama.meta_val_str("tokenizer.chat_template").ok()
    }

    /// The chat template, if the model has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }

    /// The token that ends a raw terminal candidate: EOS, else EOT.
    pub fn end_of_generation(&self) -> Option<Token> {
        self.end_of_generation
    }

    /// Whether `token` ends a generation (EOS, EOT, `<|im_end|>`...).
    pub fn is_end_of_generation(&self, token: Token) -> bool {
        self.llama.vocab().is_eog(token.llama())
    }

    /// Whether the tokenizer adds a BOS token to the start of a text.
    pub fn adds_bos(&self) -> bool {
        self.llama.vocab().should_add_bos()
    }

    /// The BOS token, if the model has one.
    pub fn bos(&self) -> Option<Token> {
        let bos = self.llama.vocab().bos().0;
        self.is_valid_token(bos).then_some(Token(bos))
    }

    /// The token with this id, if the vocabulary has it (an id from a client).
    pub fn token(&self, id: i64) -> Result<Token, EngineError> {
        i32::try_from(id)
            .ok()
            .filter(|&id| self.is_valid_token(id))
            .map(Token)
            .ok_or(EngineError::InvalidToken {
                id,
                n_vocab: self.meta.n_vocab,
            })
    }

    /// The tokens with these ids; the first id outside the vocabulary is an error.
    pub fn tokens(&self, ids: &[i64]) -> Result<Vec<Token>, EngineError> {
        ids.iter().map(|&id| self.token(id)).collect()
    }

    /// Tokenizes `text`. `add_special` adds BOS where the model wants one; `parse_special` turns
    /// special-token text such as `<|im_end|>` into that token instead of plain characters.
    pub fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<Token>, EngineError> {
        if text.len() > MAX_TEXT_BYTES {
            return Err(EngineError::InvalidInput(format!(
                "a text of {} bytes is longer than the {MAX_TEXT_BYTES} bytes endorm tokenizes",
                text.len()
            )));
        }
        if text.is_empty() && !add_special {
            return Ok(Vec::new());
        }
        let vocab = self.llama.vocab();
        // llama.cpp's special-token parsing costs the square of the occurrences in one text:
        // many are tokenized in pieces that give the same tokens (`special.rs`), with a chance to
        // stop between them.
        let cuts = match parse_special {
            true => self.special.cut_points(text),
            false => Vec::new(),
        };
        let bos = self.adds_bos().then(|| self.bos()).flatten();
        let whole = cuts.is_empty()
            || (add_special
                && vocab.tokenize(b"", true, false).len() != usize::from(bos.is_some()));
        if whole {
            let tokens = vocab.tokenize(text.as_bytes(), add_special, parse_special);
            return Ok(tokens.into_iter().map(|t| Token(t.0)).collect());
        }
        let mut tokens: Vec<Token> = bos.filter(|_| add_special).into_iter().collect();
        let mut start = 0;
        for end in cuts.into_iter().chain([text.len()]) {
            cancel::check()?;
            let piece = vocab.tokenize(&text.as_bytes()[start..end], false, true);
            tokens.extend(piece.into_iter().map(|t| Token(t.0)));
            start = end;
        }
        Ok(tokens)
    }

    /// Whether `id` is in the vocabulary: anything else must never reach llama.cpp.
    fn is_valid_token(&self, id: i32) -> bool {
        u32::try_from(id).is_ok_and(|id| id < self.meta.n_vocab)
    }

    /// The bytes of one token (special tokens as their text).
    pub fn token_bytes(&self, token: Token) -> Vec<u8> {
        self.llama.vocab().token_to_piece(token.llama(), true, None)
    }

    /// Text of a token sequence; special tokens are rendered as their text.
    pub fn detokenize(&self, tokens: &[Token]) -> String {
        let bytes: Vec<u8> = tokens.iter().flat_map(|&t| self.token_bytes(t)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The text of each token, such that joining them gives the whole text: a character whose bytes
    /// span several tokens is given to the token that completes it.
    pub fn token_texts(&self, tokens: &[Token]) -> Vec<String> {
        let mut pending = Vec::new();
        let mut texts = Vec::with_capacity(tokens.len());
        for &token in tokens {
            pending.extend(self.token_bytes(token));
            texts.push(take_complete_utf8(&mut pending));
        }
        if !pending.is_empty() {
            if let Some(last) = texts.last_mut() {
                last.push_str(&String::from_utf8_lossy(&pending));
            }
        }
        texts
    }
}

/// Removes and returns the longest prefix of `bytes` that is complete UTF-8; invalid bytes become U+FFFD.
fn take_complete_utf8(bytes: &mut Vec<u8>) -> String {
    let complete = match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        // An incomplete character at the end waits for the next token; anything else is invalid.
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => bytes.len(),
    };
    let text = String::from_utf8_lossy(&bytes[..complete]).into_owned();
    bytes.drain(..complete);
    text
}

#[cfg(test)]
mod tests {
    use super::take_complete_utf8;

    #[test]
    fn split_characters_wait_for_their_last_byte() {
        let smile = "😀".as_bytes();
        let mut pending = smile[..2].to_vec();
        assert_eq!(take_complete_utf8(&mut pending), "");
        pending.extend(&smile[2..]);
        pending.extend(b"!");
        assert_eq!(take_complete_utf8(&mut pending), "😀!");
        assert!(pending.is_empty());
    }

    #[test]
    fn invalid_bytes_do_not_stall() {
        let mut pending = vec![b'a', 0xff, b'b'];
        assert_eq!(take_complete_utf8(&mut pending), "a\u{fffd}b");
    }
}
