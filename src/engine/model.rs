//! A loaded GGUF model: metadata, tokenizer and chat template. Read-only once loaded, so one `Model`
//! can be shared by every scorer (context) built on it.

use std::path::{Path, PathBuf};

use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use super::rpc::{self, RpcEndpoint};
use super::template::ChatTemplate;
use super::{backend, cpu_kernels, gguf, loadlog, EngineError, Token};

/// The longest text endorm tokenizes; llama.cpp counts tokens in an `i32`.
const MAX_TEXT_BYTES: usize = (i32::MAX / 4) as usize;

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct ModelOptions {
    /// Layers to offload to the GPU (0 on CPU-only builds); with `rpc`, to the RPC workers and
    /// the GPUs, where 0 means every layer.
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
#[derive(Debug, Clone, PartialEq)]
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
}

/// A GGUF model loaded through llama.cpp (read into memory, unless `use_mmap`).
pub struct Model {
    llama: LlamaModel,
    meta: ModelInfo,
    template: Option<ChatTemplate>,
    end_of_generation: Option<Token>,
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
            .with_use_mmap(options.use_mmap);
        if let Some(devices) = rpc::devices(&options.rpc).map_err(not_loaded)? {
            params = params
                .with_devices(&devices)
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
        if !options.rpc.is_empty() {
            let workers: Vec<&str> = options.rpc.iter().map(RpcEndpoint::as_str).collect();
            tracing::info!(
                path = %path.display(),
                workers = %workers.join(","),
                "model placed (llama.cpp counts the RPC workers' layers as GPU layers): {}",
                log.placement.join("; ")
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

        let meta = ModelInfo {
            n_ctx_train: llama.n_ctx_train(),
            n_vocab: u32::try_from(vocab.n_tokens()).unwrap_or(0),
            n_params: llama.n_params(),
            size_bytes: llama.size(),
            chat_template: template.is_some(),
            path: path.to_owned(),
            cpu: cpu_kernels()?.to_owned(),
        };
        Ok(Model {
            llama,
            meta,
            template,
            end_of_generation,
        })
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
        let tokens = self
            .llama
            .vocab()
            .tokenize(text.as_bytes(), add_special, parse_special);
        Ok(tokens.into_iter().map(|t| Token(t.0)).collect())
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
