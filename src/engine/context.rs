//! The one owner of a llama.cpp context and its batch: creating it within llama.cpp's limits,
//! KV-cache sequence operations, and the chunked decode every operation goes through.
//!
//! Every position and sequence is checked against the limits before llama.cpp sees it, because
//! llama.cpp aborts the process on a bad one.

use std::num::NonZeroU32;
use std::ops::Range;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;

use super::plan::{decode_chunks, logits_rows, pass_rows, Limits};
use super::{backend, EngineError, Model, Token};

/// Tuning of one context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextOptions {
    /// Context window in tokens (KV cells shared by the context and all candidates of a group).
    pub n_ctx: u32,
    /// Most tokens per decode. At most 63 keeps llama.cpp on its row-by-row attention kernel
    /// (64 and more switch to a tiled one with other sums), which makes values independent of what
    /// is decoded beside them: prefix-cache hits and batched requests then equal cold requests
    /// exactly, at some cost in speed (BENCHMARKS.md).
    pub n_batch: u32,
    /// CPU threads.
    pub n_threads: u32,
    /// Most candidates decoded side by side (llama.cpp allows 256 sequences in all).
    pub max_sequences: u32,
    /// Recent contexts kept in the KV cache for the requests that continue them; 0 turns the prefix
    /// cache off, so every request starts cold and gives the same values whatever came before.
    pub cache_slots: u32,
    /// Most tokens kept cached between requests, besides the last request's context.
    pub cache_tokens: u32,
}

impl ContextOptions {
    /// Tokens per decode unless configured.
    pub const N_BATCH: u32 = 512;
    /// Candidates side by side unless configured.
    pub const MAX_SEQUENCES: u32 = 64;
    /// Prefix-cache slots unless configured (off).
    pub const CACHE_SLOTS: u32 = 0;
    /// Prefix-cache budget in tokens unless configured.
    pub const CACHE_TOKENS: u32 = 4096;
    /// The largest context window chosen unless configured.
    pub const MAX_DEFAULT_N_CTX: u32 = 4096;

    /// Sequences a context keeps besides its candidates' for `cache_slots` prefix-cache slots: one
    /// per slot (at least one, the current request's context) and one for the padding token of a
    /// decode. llama.cpp wants more tokens per decode (`n_batch`) than sequences.
    pub fn reserved_sequences(cache_slots: u32) -> u32 {
        cache_slots.clamp(1, 128) + 1
    }

    /// Defaults for `model`: its trained context up to 4096 tokens, one thread per core.
    pub fn for_model(model: &Model) -> Self {
        ContextOptions {
            n_ctx: model.meta().n_ctx_train.clamp(256, Self::MAX_DEFAULT_N_CTX),
            n_batch: Self::N_BATCH,
            n_threads: default_threads(),
            max_sequences: Self::MAX_SEQUENCES,
            cache_slots: Self::CACHE_SLOTS,
            cache_tokens: Self::CACHE_TOKENS,
        }
    }
}

/// One thread per core.
pub fn default_threads() -> u32 {
    std::thread::available_parallelism().map_or(4, |n| n.get() as u32)
}

/// llama.cpp's hard limit on sequences per context.
const LLAMA_MAX_SEQ: u32 = 256;

/// Memory for the logits rows of one decode. llama.cpp keeps an output buffer (and a graph output
/// tensor) as large as the most rows a decode ever asked for, so a decode of 512 candidate tokens
/// would pin 512 × vocabulary × 4 bytes (96 MiB on a 49k vocabulary) for the context's life;
/// decodes are split instead so that none asks for more rows than fit here (BENCHMARKS.md gives
/// the speed cost).
const LOGITS_BUDGET_BYTES: usize = 16 << 20;

/// One token of a decode: where it goes and whether its logits row is computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Step {
    pub token: Token,
    pub position: usize,
    pub sequence: i32,
    /// Further sequences the token's KV cell belongs to (empty for most): a context token decoded
    /// in the same pass as candidates that branch from it is theirs too.
    pub also: Range<i32>,
    pub wants_row: bool,
}

/// A llama.cpp context: KV cells shared by `sequences` sequences, plus one spare for padding.
pub(super) struct Context<'m> {
    llama: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    limits: Limits,
    /// Sequences `0..sequences` are usable; sequence `sequences` is the padding's.
    sequences: i32,
    /// llama.cpp decodes (passes over the weights) so far.
    decodes: u64,
    /// Rows a decode holding a whole candidate pass may compute ([`pass_rows`]).
    pass_rows: usize,
}

impl<'m> Context<'m> {
    /// A context of `n_ctx` cells and `n_batch` tokens per decode on `model`, with `reserved`
    /// sequences (the prefix cache's slots) before up to `max_sequences` candidate sequences.
    pub fn new(
        model: &'m Model,
        n_ctx: u32,
        n_batch: u32,
        n_threads: u32,
        reserved: u32,
        max_sequences: u32,
    ) -> Result<Self, EngineError> {
        // One KV cell more than asked, for the padding token of `decode`.
        let cells = NonZeroU32::new(n_ctx.saturating_add(1))
            .filter(|_| n_ctx > 0)
            .ok_or_else(|| EngineError::Backend("n_ctx must be at least 1".into()))?;
        let n_batch = n_batch.max(1);
        // llama.cpp aborts when a context has more sequences than tokens per decode (its
        // `n_outputs_max`).
        let room = n_batch
            .min(LLAMA_MAX_SEQ)
            .saturating_sub(ContextOptions::reserved_sequences(reserved));
        if room == 0 {
            return Err(EngineError::Backend(format!(
                "n_batch ({n_batch}) must be larger than the prefix cache's slots + 1 ({})",
                ContextOptions::reserved_sequences(reserved)
            )));
        }
        if max_sequences > room {
            tracing::warn!(
                max_sequences,
                n_batch,
                "max_sequences is more than n_batch leaves room for: {room} candidates are decoded side by side"
            );
        }
        let max_sequences = max_sequences.clamp(1, room);
        let n_seq_max = reserved + max_sequences + 1;
        let threads = i32::try_from(n_threads.max(1)).unwrap_or(i32::MAX);
        let params = LlamaContextParams::default()
            .with_n_ctx(Some(cells))
            .with_n_batch(n_batch)
            .with_n_ubatch(n_batch)
            .with_n_seq_max(n_seq_max)
            .with_kv_unified(true)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let backend = backend()?;
        // llama.cpp reads ggml's device list here, which an RPC worker may be joining (rpc.rs).
        let registry = super::rpc::registry_read();
        let llama = model
            .llama()
            .new_context(backend, params)
            .map_err(|e| EngineError::Backend(format!("cannot create a context: {e}")))?;
        drop(registry);
        // llama.cpp rounds n_ctx up and may cap n_batch: plan with what was asked and it made.
        let n_batch = llama.n_batch() as usize;
        let limits = Limits {
            n_ctx: (n_ctx as usize).min(llama.n_ctx() as usize - 1),
            n_batch,
            max_sequences: max_sequences as usize,
            max_rows: logits_rows(LOGITS_BUDGET_BYTES, model.meta().n_vocab as usize, n_batch),
        };
        Ok(Context {
            llama,
            // A token may belong to its sequence and every candidate sequence (`Step::also`).
            batch: LlamaBatch::new(limits.n_batch, max_sequences as i32 + 1),
            limits,
            sequences: (reserved + max_sequences) as i32,
            decodes: 0,
            pass_rows: pass_rows(
                LOGITS_BUDGET_BYTES,
                model.meta().n_vocab as usize,
                limits.n_batch,
                limits.max_rows,
            ),
        })
    }

    /// What fits: cells, tokens per decode, candidate sequences.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// llama.cpp decodes (passes over the weights) so far.
    pub fn decodes(&self) -> u64 {
        self.decodes
    }

    /// Rows a decode holding a whole candidate pass may compute: the logits budget unrounded.
    pub fn pass_rows(&self) -> usize {
        self.pass_rows
    }

    /// Decodes `steps` in chunks of at most `n_batch` tokens and `max_rows` logits rows. After each
    /// chunk, `read(chunk, rows)` gets the chunk's range of indices into `steps` and its logits:
    /// `rows.row(i)` is the row of step `chunk.start + i`, which must have `wants_row`.
    pub fn decode(
        &mut self,
        steps: &[Step],
        read: impl FnMut(Range<usize>, &Rows<'_, 'm>) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let Limits {
            n_batch, max_rows, ..
        } = self.limits;
        let chunks = decode_chunks(steps.iter().map(|s| s.wants_row), n_batch, max_rows);
        self.decode_in(steps, chunks, read)
    }

    /// [`Context::decode`] in the given `chunks` (consecutive ranges covering `steps`, each within
    /// the limits: [`super::plan::candidate_chunks`]).
    pub fn decode_in(
        &mut self,
        steps: &[Step],
        chunks: Vec<Range<usize>>,
        mut read: impl FnMut(Range<usize>, &Rows<'_, 'm>) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        for chunk in chunks {
            self.batch.clear();
            for step in &steps[chunk.clone()] {
                self.add(step)?;
            }
            self.decode_batch()?;
            read(chunk, &Rows(&self.llama))?;
        }
        Ok(())
    }

    /// Adds one token after checking it against the limits.
    fn add(&mut self, step: &Step) -> Result<(), EngineError> {
        let usable = 0..self.sequences;
        let in_limits = step.position < self.limits.n_ctx
            && usable.contains(&step.sequence)
            && (step.also.is_empty()
                || (usable.contains(&step.also.start) && step.also.end <= self.sequences))
            && (self.batch.n_tokens() as usize) < self.limits.n_batch;
        if !in_limits {
            return Err(EngineError::Internal(format!(
                "token at position {} on sequence {} is outside the context's limits",
                step.position, step.sequence
            )));
        }
        // Most tokens belong to one sequence: no allocation for them.
        let shared: Vec<i32>;
        let sequences = if step.also.is_empty() {
            std::slice::from_ref(&step.sequence)
        } else {
            shared = std::iter::once(step.sequence)
                .chain(step.also.clone())
                .collect();
            &shared
        };
        self.batch
            .add(
                step.token.llama(),
                step.position as i32,
                sequences,
                step.wants_row,
            )
            .map_err(|e| EngineError::Decode(e.to_string()))
    }

    fn decode_batch(&mut self) -> Result<(), EngineError> {
        // llama.cpp attends a lone token over a long KV view with another kernel (split-KV), whose
        // sums differ from the row-by-row one; a throwaway token on a spare sequence keeps every
        // decode on the same kernels, so a one-token cache extension equals a cold request.
        let spare = self.sequences;
        let padded = self.batch.n_tokens() == 1 && self.limits.n_batch > 1;
        if padded {
            self.batch
                .add(llama_cpp_2::token::LlamaToken(0), 0, &[spare], false)
                .map_err(|e| EngineError::Decode(e.to_string()))?;
        }
        self.decodes += 1;
        let decoded = self
            .llama
            .decode(&mut self.batch)
            .map_err(|e| EngineError::Decode(e.to_string()));
        if padded {
            self.remove(spare, 0)?;
        }
        decoded
    }

    /// Removes positions `from..` of a sequence from the KV cache.
    pub fn remove(&mut self, sequence: i32, from: usize) -> Result<(), EngineError> {
        let removed = self
            .llama
            .clear_kv_cache_seq(Some(sequence as u32), Some(from as u32), None)
            .map_err(|e| EngineError::Decode(e.to_string()))?;
        if removed {
            Ok(())
        } else {
            Err(EngineError::Decode(format!(
                "llama.cpp could not trim sequence {sequence}"
            )))
        }
    }

    /// Adds sequence `to` to the cells of positions `0..end` (all when `None`) of sequence `from`;
    /// the unified KV cache shares the cells, it copies nothing.
    pub fn share(&mut self, from: i32, to: i32, end: Option<usize>) -> Result<(), EngineError> {
        self.llama
            .copy_kv_cache_seq(from, to, Some(0), end.map(|e| e as u32))
            .map_err(|e| EngineError::Decode(e.to_string()))
    }

    /// Empties the KV cache.
    pub fn clear(&mut self) {
        self.llama.clear_kv_cache();
    }
}

/// The logits rows of the last decode.
pub(super) struct Rows<'c, 'm>(&'c LlamaContext<'m>);

impl Rows<'_, '_> {
    /// The row of the `i`-th token of the last decode.
    pub fn row(&self, i: usize) -> &[f32] {
        self.0.get_logits_ith(i as i32)
    }
}
