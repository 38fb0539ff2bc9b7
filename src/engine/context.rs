//! The one owner of a llama.cpp context and its batch: creating it within llama.cpp's limits,
//! KV-cache sequence operations, and the chunked decode every operation goes through.
//!
//! Every position and sequence is checked against the limits before llama.cpp sees it, because
//! llama.cpp aborts the process on a bad one.

use std::num::NonZeroU32;
use std::ops::Range;

use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use serde::{Deserialize, Serialize};

use super::plan::{decode_chunks, logits_rows, pass_rows, Limits};
use super::{backend, EngineError, Model, Token};

/// Tuning of one context, resolved from the settings by [`super::ModelSettings::context_options`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextOptions {
    /// Context window in tokens (KV cells shared by the context and all candidates of a group).
    pub n_ctx: u32,
    /// Most tokens per decode. With f16 keys and values ([`KvType::tiles`]) a decode of 64 tokens
    /// or more runs llama.cpp's tiled attention kernel, whose sums differ from the row-by-row
    /// one's: at most 63 keeps every decode row by row, as q8_0 keys and values do at any size
    /// (README, "Numerics").
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
    /// Decode a beginning that several candidates share once (their prefix tree); off decodes
    /// every candidate's tokens in full, for comparison.
    pub prefix_tree: bool,
    /// How the KV cache stores keys.
    pub type_k: KvType,
    /// How the KV cache stores values.
    pub type_v: KvType,
}

/// How the KV cache stores keys or values.
///
/// The choice also picks llama.cpp's CPU attention kernel. With keys and values both `f16`,
/// a decode of 64 tokens or more runs a tiled kernel and a lone token over 512 cells or more a
/// split-KV one, whose sums differ from the row-by-row kernel smaller decodes run: a text's values
/// then depend on how it was laid out in decodes. With any other pair every decode runs the
/// row-by-row kernel, which computes each token's attention alone, in KV-cell order (README,
/// "Numerics").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvType {
    /// 16-bit floats, 2 bytes a value.
    F16,
    /// bfloat16, 2 bytes a value.
    Bf16,
    /// 8-bit integers with a 16-bit scale per 32 values, 1.06 bytes a value.
    Q8_0,
}

impl KvType {
    fn llama(self) -> KvCacheType {
        match self {
            KvType::F16 => KvCacheType::F16,
            KvType::Bf16 => KvCacheType::BF16,
            KvType::Q8_0 => KvCacheType::Q8_0,
        }
    }

    /// Whether a pair of key and value types lets llama.cpp's CPU attention tile large decodes
    /// (and split a lone token's), so that values depend on the layout of decodes.
    pub fn tiles(type_k: KvType, type_v: KvType) -> bool {
        type_k == KvType::F16 && type_v == KvType::F16
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvType::F16 => "f16",
            KvType::Bf16 => "bf16",
            KvType::Q8_0 => "q8_0",
        })
    }
}

impl std::str::FromStr for KvType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f16" => Ok(KvType::F16),
            "bf16" => Ok(KvType::Bf16),
            "q8_0" => Ok(KvType::Q8_0),
            _ => Err(format!("`{s}` is not a KV type: f16, bf16 or q8_0")),
        }
    }
}

impl ContextOptions {
    /// Context slots (sequences holding a context each) for `cache_slots` prefix-cache slots: at
    /// least two, one for the request under way and one for another client's job run between the
    /// slices of a long context (`Scorer::score_between`), with the cache off too.
    pub fn context_slots(cache_slots: u32) -> u32 {
        cache_slots.clamp(2, 128)
    }

    /// Sequences a context keeps besides its candidates': its context slots and one for the
    /// padding token of a decode. llama.cpp wants more tokens per decode (`n_batch`) than
    /// sequences.
    pub fn reserved_sequences(cache_slots: u32) -> u32 {
        Self::context_slots(cache_slots) + 1
    }
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
    /// A context of `n_ctx` cells of `kv` (key and value) types and `n_batch` tokens per decode on
    /// `model`, with `reserved` sequences (the prefix cache's slots) before up to `max_sequences`
    /// candidate sequences.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: &'m Model,
        n_ctx: u32,
        n_batch: u32,
        n_threads: u32,
        reserved: u32,
        max_sequences: u32,
        (type_k, type_v): (KvType, KvType),
    ) -> Result<Self, EngineError> {
        // One KV cell more than asked, for the padding token of `decode`.
        let cells = NonZeroU32::new(n_ctx.saturating_add(1))
            .filter(|_| n_ctx > 0)
            .ok_or_else(|| EngineError::Backend("n_ctx must be at least 1".into()))?;
        // llama.cpp caps a decode at the context's size; capped here first, so that the room
        // for sequences below is counted from the `n_batch` llama.cpp will use.
        let asked = n_batch.max(1);
        let n_batch = asked.min(cells.get());
        // llama.cpp aborts when a context has more sequences than tokens per decode (its
        // `n_outputs_max`).
        let room = n_batch
            .min(LLAMA_MAX_SEQ)
            .saturating_sub(ContextOptions::reserved_sequences(reserved));
        if room == 0 {
            let capped = match n_batch < asked {
                true => format!(", {asked} capped at n_ctx + 1"),
                false => String::new(),
            };
            return Err(EngineError::Backend(format!(
                "n_batch ({n_batch}{capped}) must be larger than the context slots + 1 ({})",
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
            .with_n_threads_batch(threads)
            .with_type_k(type_k.llama())
            .with_type_v(type_v.llama());
        let backend = backend()?;
        // llama.cpp reads ggml's device list here, which an RPC worker may be joining (rpc.rs).
        let registry = super::rpc::registry_read();
        let (created, log) = super::loadlog::capture(|| model.llama().new_context(backend, params));
        let llama = created.map_err(|e| {
            // llama.cpp's own reason (a KV buffer it could not allocate) is in its log, not in
            // the error it returns: quote it.
            let cause = match log.problems.is_empty() {
                true => String::new(),
                false => format!(" ({})", log.problems.join("; ")),
            };
            EngineError::Backend(format!(
                "cannot create a context of {n_ctx} tokens: {e}{cause}"
            ))
        })?;
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

    /// Usable sequences (the padding's is the one after them).
    pub fn sequences(&self) -> usize {
        self.sequences as usize
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
