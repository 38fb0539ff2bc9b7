//! One llama.cpp context that scores candidates with their context decoded once.
//!
//! Sequence 0 holds the context. Each candidate of a group gets its own sequence, which shares the
//! context's KV cells (unified KV cache: `seq_cp` adds the sequence to the cells, it copies
//! nothing). The candidates' tokens are then packed into as few decodes as `n_batch` allows, and only
//! the rows the reward reads are computed: the context's last row, and each candidate token's row
//! except after a terminal token.

mod batch;

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;

use super::cache::{Plan, PrefixCache};
use super::plan::{group_candidates, Limits, Overflow};
use super::{backend, EngineError, LlamaToken, Model, Prepared};
use crate::reward::{self, Alpha, RowValue, TokenValues};

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
    /// Defaults for `model`: up to 4096 tokens of context, 512 per decode, one thread per core.
    pub fn for_model(model: &Model) -> Self {
        ContextOptions {
            n_ctx: model.meta().n_ctx_train.clamp(256, 4096),
            n_batch: 512,
            n_threads: std::thread::available_parallelism().map_or(4, |n| n.get() as u32),
            max_sequences: 64,
            cache_slots: 0,
            cache_tokens: 4096,
        }
    }
}

/// llama.cpp's hard limit on sequences per context.
const LLAMA_MAX_SEQ: u32 = 256;

/// Per-token values of every candidate, and where the time went.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// One entry per candidate, in order.
    pub candidates: Vec<Vec<TokenValues>>,
    /// Leading context tokens found in the prefix cache, not decoded again.
    pub cached_tokens: usize,
    /// Decoding the context.
    pub prompt_time: Duration,
    /// Decoding the candidates and computing their rewards.
    pub candidates_time: Duration,
}

/// A llama.cpp context on a model, owned by one thread at a time.
pub struct Scorer<'m> {
    model: &'m Model,
    context: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    limits: Limits,
    cache: PrefixCache,
    cache_enabled: bool,
    cache_tokens: usize,
}

impl<'m> Scorer<'m> {
    /// Creates a context on `model`.
    pub fn new(model: &'m Model, options: ContextOptions) -> Result<Self, EngineError> {
        // One KV cell more than asked, for the padding token of `decode`.
        let n_ctx = NonZeroU32::new(options.n_ctx.saturating_add(1))
            .filter(|_| options.n_ctx > 0)
            .ok_or_else(|| EngineError::Backend("n_ctx must be at least 1".into()))?;
        let cache_slots = options.cache_slots.clamp(1, LLAMA_MAX_SEQ / 2);
        let n_batch = options.n_batch.max(1);
        // One sequence is kept for the padding token of `decode`; and llama.cpp
        // aborts when a context has more sequences than tokens per decode (its `n_outputs_max`).
        let room = n_batch.min(LLAMA_MAX_SEQ).saturating_sub(cache_slots + 1);
        if room == 0 {
            return Err(EngineError::Backend(format!(
                "n_batch ({n_batch}) must be larger than the prefix cache's slots + 1 ({})",
                cache_slots + 1
            )));
        }
        let max_sequences = options.max_sequences.clamp(1, room);
        let threads = i32::try_from(options.n_threads.max(1)).unwrap_or(i32::MAX);
        let params = LlamaContextParams::default()
            .with_n_ctx(Some(n_ctx))
            .with_n_batch(n_batch)
            .with_n_ubatch(n_batch)
            .with_n_seq_max(cache_slots + max_sequences + 1)
            .with_kv_unified(true)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let context = model
            .llama()
            .new_context(backend()?, params)
            .map_err(|e| EngineError::Backend(format!("cannot create a context: {e}")))?;
        // llama.cpp rounds n_ctx up and may cap n_batch: plan with what was asked and it made.
        let limits = Limits {
            n_ctx: (options.n_ctx as usize).min(context.n_ctx() as usize - 1),
            n_batch: context.n_batch() as usize,
            max_sequences: max_sequences as usize,
        };
        Ok(Scorer {
            model,
            context,
            batch: LlamaBatch::new(limits.n_batch, 1),
            limits,
            cache: PrefixCache::new(cache_slots as usize),
            cache_enabled: options.cache_slots > 0,
            cache_tokens: options.cache_tokens as usize,
        })
    }

    /// The model this context runs.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// The context window in tokens.
    pub fn n_ctx(&self) -> usize {
        self.limits.n_ctx
    }

    /// Scores every candidate of `prepared` after its context.
    ///
    /// The context continues the longest matching one in the prefix cache: only the tokens after
    /// the shared prefix are decoded, and none when the same context was scored last.
    pub fn score(&mut self, prepared: &Prepared, alpha: Alpha) -> Result<Scored, EngineError> {
        self.validate(prepared)?;
        let lens: Vec<usize> = prepared.candidates.iter().map(|c| c.tokens.len()).collect();
        // Refuse what cannot fit even in an empty cache, naming the whole window.
        group_candidates(prepared.context.len(), &lens, self.limits)
            .map_err(|overflow| self.overflow(overflow))?;

        if !self.cache_enabled {
            self.reset_kv();
        }
        let result = self.score_cached(prepared, &lens, alpha);
        if result.is_err() {
            self.reset_kv();
        }
        result
    }

    fn score_cached(
        &mut self,
        prepared: &Prepared,
        lens: &[usize],
        alpha: Alpha,
    ) -> Result<Scored, EngineError> {
        let started = Instant::now();
        let context = &prepared.context;
        let plan = self.make_room(context, lens)?;
        let available = self.limits.n_ctx - self.cache.tokens_besides(plan.slot);
        let limits = Limits {
            n_ctx: available,
            ..self.limits
        };
        let groups = group_candidates(context.len(), lens, limits)
            .map_err(|overflow| self.overflow(overflow))?;

        let slot = plan.slot as i32;
        let (v_first, first_logits) = if plan.full_hit {
            self.cache.touch(plan.slot);
            let row = self.cache.last_row(plan.slot).unwrap_or_default();
            first_row_values(row, prepared, alpha)?
        } else {
            self.seat_prefix(plan)?;
            let last_row = self.decode_context(&context[plan.reused..], plan.reused, slot)?;
            let row = self.row(last_row)?.to_vec();
            let values = first_row_values(&row, prepared, alpha)?;
            self.cache.store(plan.slot, context, Some(row));
            values
        };
        let prompt_time = started.elapsed();

        let rows: Vec<Vec<RowValue>> = first_logits
            .iter()
            .map(|&q| {
                vec![RowValue {
                    v: v_first,
                    q_next: Some(q),
                }]
            })
            .collect();
        let mut rows = vec![rows];
        for group in groups {
            let branch = Branch {
                request: 0,
                prepared,
                context_sequence: slot,
                group,
                alpha,
            };
            self.decode_branches(&[branch], self.cache.slot_count(), &mut rows)?;
        }
        let rows = rows.remove(0);
        self.keep_within_budget(plan.slot);
        Ok(Scored {
            candidates: candidate_values(prepared, &rows, alpha)?,
            cached_tokens: plan.reused,
            prompt_time,
            candidates_time: started.elapsed() - prompt_time,
        })
    }

    /// Plans where the context goes and evicts cached contexts, least recently used first, until
    /// the context and all candidates fit beside the rest in one group (or nothing is left to evict).
    fn make_room(&mut self, context: &[LlamaToken], lens: &[usize]) -> Result<Plan, EngineError> {
        let candidates = lens.iter().sum::<usize>();
        let largest = context.len() + lens.iter().copied().max().unwrap_or(0);
        let mut plan = self.cache.plan(context);
        loop {
            // A fork shares its prefix's cells with the slot it is copied from.
            let shared = if plan.copy_from.is_some() {
                plan.reused
            } else {
                0
            };
            let needed = context.len() - shared + candidates;
            let others = self.cache.tokens_besides(plan.slot);
            if others + needed <= self.limits.n_ctx {
                return Ok(plan);
            }
            let victim = self
                .cache
                .eviction_candidate(plan.slot)
                .filter(|&v| Some(v) != plan.copy_from || others + largest > self.limits.n_ctx);
            let Some(victim) = victim else {
                return Ok(plan);
            };
            self.remove_sequence(victim as i32, 0)?;
            self.cache.evict(victim);
            if Some(victim) == plan.copy_from {
                plan = self.cache.plan(context);
            }
        }
    }

    /// Puts the plan's reused prefix into its slot: copied from another slot, or kept in place
    /// with whatever followed it removed.
    fn seat_prefix(&mut self, plan: Plan) -> Result<(), EngineError> {
        let slot = plan.slot as i32;
        match plan.copy_from {
            Some(source) => {
                self.remove_sequence(slot, 0)?;
                self.context
                    .copy_kv_cache_seq(source as i32, slot, Some(0), Some(plan.reused as u32))
                    .map_err(|e| EngineError::Decode(e.to_string()))?;
            }
            None => self.remove_sequence(slot, plan.reused)?,
        }
        // Until the context is decoded, the slot holds no context the cache could offer.
        self.cache.evict(plan.slot);
        Ok(())
    }

    /// Evicts cached contexts other than `keep` while they hold more than the cache budget.
    fn keep_within_budget(&mut self, keep: usize) {
        while self.cache.tokens_besides(keep) > self.cache_tokens {
            let Some(victim) = self.cache.eviction_candidate(keep) else {
                break;
            };
            if self.remove_sequence(victim as i32, 0).is_err() {
                break;
            }
            self.cache.evict(victim);
        }
    }

    /// Removes positions `from..` of a sequence from the KV cache.
    fn remove_sequence(&mut self, sequence: i32, from: usize) -> Result<(), EngineError> {
        let removed = self
            .context
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

    /// Empties the KV cache and forgets every cached context: the next request starts cold.
    pub fn clear_cache(&mut self) {
        self.reset_kv();
    }

    fn reset_kv(&mut self) {
        self.context.clear_kv_cache();
        self.cache.clear();
    }

    /// Decodes `tokens` on `sequence` from `start` on and returns the batch index of the last row.
    fn decode_context(
        &mut self,
        tokens: &[LlamaToken],
        start: usize,
        sequence: i32,
    ) -> Result<i32, EngineError> {
        let mut last_row = 0;
        for (chunk_index, chunk) in tokens.chunks(self.limits.n_batch).enumerate() {
            self.batch.clear();
            let offset = start + chunk_index * self.limits.n_batch;
            let is_last_chunk = offset + chunk.len() == start + tokens.len();
            for (i, &token) in chunk.iter().enumerate() {
                let wants_row = is_last_chunk && i + 1 == chunk.len();
                self.add(token, offset + i, sequence, wants_row)?;
            }
            last_row = self.batch.n_tokens() - 1;
            self.decode()?;
        }
        Ok(last_row)
    }

    /// Decodes the candidates of `branches` together, each on its own sequence (from
    /// `first_sequence` on) branched from its context's, and appends the rows each candidate needs
    /// to `rows[branch.request][candidate]`.
    fn decode_branches(
        &mut self,
        branches: &[Branch<'_>],
        first_sequence: usize,
        rows: &mut [Vec<Vec<RowValue>>],
    ) -> Result<(), EngineError> {
        // Every (branch, candidate, position, sequence) in order, with whether its row is read.
        let mut steps = Vec::new();
        let mut sequence = first_sequence as i32;
        for (b, branch) in branches.iter().enumerate() {
            for index in branch.group.clone() {
                self.context
                    .copy_kv_cache_seq(branch.context_sequence, sequence, None, None)
                    .map_err(|e| EngineError::Decode(e.to_string()))?;
                let candidate = &branch.prepared.candidates[index];
                let len = candidate.tokens.len();
                steps.extend((0..len).map(|t| (b, index, t, sequence)));
                sequence += 1;
            }
        }
        for chunk in steps.chunks(self.limits.n_batch) {
            self.batch.clear();
            for &(b, index, t, sequence) in chunk {
                let branch = &branches[b];
                let candidate = &branch.prepared.candidates[index];
                let wants_row = !(candidate.terminal && t + 1 == candidate.tokens.len());
                let position = branch.prepared.context.len() + t;
                self.add(candidate.tokens[t], position, sequence, wants_row)?;
            }
            self.decode()?;
            for (batch_index, &(b, index, t, _)) in chunk.iter().enumerate() {
                let branch = &branches[b];
                let candidate = &branch.prepared.candidates[index];
                if candidate.terminal && t + 1 == candidate.tokens.len() {
                    continue;
                }
                let next = candidate.tokens.get(t + 1).map(|token| token.0 as usize);
                let row = reward::row_value(self.row(batch_index as i32)?, next, branch.alpha)
                    .ok_or_else(|| {
                        EngineError::Decode("a candidate token is outside the logits row".into())
                    })?;
                rows[branch.request][index].push(row);
            }
        }
        for sequence in first_sequence as i32..sequence {
            self.remove_sequence(sequence, 0)?;
        }
        Ok(())
    }

    /// Decodes a token sequence on its own (sequence 0, from position 0), computing logits rows
    /// for the tokens from `rows_from` on and reading none of them: llama.cpp's own speed for the
    /// same work, which `endorm bench` compares the scorer against.
    pub fn decode_plain(
        &mut self,
        tokens: &[LlamaToken],
        rows_from: usize,
    ) -> Result<(), EngineError> {
        self.check_sequence(tokens)?;
        self.reset_kv();
        let decoded = (|| {
            for (chunk_index, chunk) in tokens.chunks(self.limits.n_batch).enumerate() {
                self.batch.clear();
                let offset = chunk_index * self.limits.n_batch;
                for (i, &token) in chunk.iter().enumerate() {
                    self.add(token, offset + i, 0, offset + i >= rows_from)?;
                }
                self.decode()?;
            }
            Ok(())
        })();
        self.reset_kv();
        decoded
    }

    fn validate(&self, prepared: &Prepared) -> Result<(), EngineError> {
        if prepared.context.is_empty() {
            return Err(EngineError::InvalidInput("the context is empty".into()));
        }
        if let Some(index) = prepared.candidates.iter().position(|c| c.tokens.is_empty()) {
            return Err(EngineError::InvalidInput(format!(
                "candidate {index} has no tokens"
            )));
        }
        let all_tokens = prepared
            .context
            .iter()
            .chain(prepared.candidates.iter().flat_map(|c| &c.tokens));
        for &token in all_tokens {
            self.check_token(token)?;
        }
        Ok(())
    }

    /// Checks a token sequence decoded on its own from position 0: it fits, every id is valid.
    fn check_sequence(&self, tokens: &[LlamaToken]) -> Result<(), EngineError> {
        if tokens.len() > self.limits.n_ctx {
            return Err(self.overflow(Overflow {
                candidate: None,
                needed: tokens.len(),
            }));
        }
        tokens.iter().try_for_each(|&token| self.check_token(token))
    }

    fn check_token(&self, token: LlamaToken) -> Result<(), EngineError> {
        if self.model.is_valid_token(token.0) {
            Ok(())
        } else {
            Err(EngineError::InvalidToken {
                id: token.0,
                n_vocab: self.model.meta().n_vocab,
            })
        }
    }

    fn overflow(&self, overflow: Overflow) -> EngineError {
        EngineError::ContextOverflow {
            what: match overflow.candidate {
                Some(index) => format!("the context with candidate {index}"),
                None => "the context".into(),
            },
            needed: overflow.needed,
            n_ctx: self.limits.n_ctx,
            n_ctx_train: self.model.meta().n_ctx_train,
        }
    }

    /// Adds one token; positions and sequences were planned within the limits, checked again here
    /// because llama.cpp aborts the process on a bad one.
    fn add(
        &mut self,
        token: LlamaToken,
        position: usize,
        sequence: i32,
        wants_row: bool,
    ) -> Result<(), EngineError> {
        let in_limits = position < self.limits.n_ctx
            && (0..(self.cache.slot_count() + self.limits.max_sequences) as i32)
                .contains(&sequence)
            && (self.batch.n_tokens() as usize) < self.limits.n_batch;
        if !in_limits {
            return Err(EngineError::Decode(format!(
                "internal planning error: token at position {position} on sequence {sequence} is outside the context's limits"
            )));
        }
        self.batch
            .add(token, position as i32, &[sequence], wants_row)
            .map_err(|e| EngineError::Decode(e.to_string()))
    }

    fn decode(&mut self) -> Result<(), EngineError> {
        // llama.cpp attends a lone token over a long KV view with another kernel (split-KV), whose
        // sums differ from the row-by-row one; a throwaway token on a spare sequence keeps every
        // decode on the same kernels, so a one-token cache extension equals a cold request.
        let spare = (self.cache.slot_count() + self.limits.max_sequences) as i32;
        let padded = self.batch.n_tokens() == 1 && self.limits.n_batch > 1;
        if padded {
            self.batch
                .add(LlamaToken(0), 0, &[spare], false)
                .map_err(|e| EngineError::Decode(e.to_string()))?;
        }
        let decoded = self
            .context
            .decode(&mut self.batch)
            .map_err(|e| EngineError::Decode(e.to_string()));
        if padded {
            self.remove_sequence(spare, 0)?;
        }
        decoded
    }

    fn row(&self, batch_index: i32) -> Result<&[f32], EngineError> {
        Ok(self.context.get_logits_ith(batch_index))
    }
}

/// Some candidates of one request, decoded beside those of other branches.
struct Branch<'a> {
    /// Index of the request among those scored together (0 when alone).
    request: usize,
    prepared: &'a Prepared,
    /// The sequence that holds the request's context.
    context_sequence: i32,
    /// Which of its candidates.
    group: std::ops::Range<usize>,
    alpha: Alpha,
}

/// Each candidate's per-token values from the rows read for it.
fn candidate_values(
    prepared: &Prepared,
    rows: &[Vec<RowValue>],
    alpha: Alpha,
) -> Result<Vec<Vec<TokenValues>>, EngineError> {
    prepared
        .candidates
        .iter()
        .zip(rows)
        .map(|(candidate, rows)| {
            reward::candidate_values(rows, candidate.terminal, alpha)
                .ok_or_else(|| EngineError::Decode("logits rows do not match the candidate".into()))
        })
        .collect()
}

/// `V(s_1)` and each candidate's first logit, from the row after the context.
fn first_row_values(
    row: &[f32],
    prepared: &Prepared,
    alpha: Alpha,
) -> Result<(f64, Vec<f64>), EngineError> {
    let firsts = prepared
        .candidates
        .iter()
        .map(|c| logit(row, c.tokens[0]))
        .collect::<Option<_>>()
        .ok_or_else(|| EngineError::Decode("a candidate token is outside the logits row".into()))?;
    Ok((reward::soft_value(row, alpha), firsts))
}

fn logit(row: &[f32], token: LlamaToken) -> Option<f64> {
    usize::try_from(token.0)
        .ok()
        .and_then(|i| row.get(i))
        .map(|&x| f64::from(x))
}

/// The next-token distribution at one position of a sequence, as `/v1/completions` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct RowLogprobs {
    /// `log π` of the token that follows in the sequence; `None` after its last token.
    pub next_logprob: Option<f64>,
    /// The most likely next tokens with their `log π`, best first (ties: lower id first); at least
    /// one entry, so `top[0]` is the greedy next token.
    pub top: Vec<(LlamaToken, f64)>,
}

impl Scorer<'_> {
    /// Log-probabilities (α = 1) along a token sequence, for OpenAI-style `echo` + `logprobs`
    /// scoring: one [`RowLogprobs`] per position `i` in `0..tokens.len() - 1` (the distribution of
    /// `tokens[i + 1]`), plus one after the last token when `after_last` (its `top[0]` is the
    /// greedy continuation). `top_k` entries per row, at least 1.
    ///
    /// The sequence is decoded on its own (sequence 0, from position 0) in chunks of `n_batch`; only
    /// one chunk's rows are held at a time.
    pub fn sequence_logprobs(
        &mut self,
        tokens: &[LlamaToken],
        top_k: usize,
        after_last: bool,
    ) -> Result<Vec<RowLogprobs>, EngineError> {
        if tokens.is_empty() {
            return Err(EngineError::InvalidInput("the prompt has no tokens".into()));
        }
        self.check_sequence(tokens)?;
        let rows_wanted = tokens.len() - usize::from(!after_last);
        let top_k = top_k.max(1);
        let mut rows = Vec::with_capacity(rows_wanted);
        self.reset_kv();
        let result = (|| {
            for (chunk_index, chunk) in tokens.chunks(self.limits.n_batch).enumerate() {
                self.batch.clear();
                let offset = chunk_index * self.limits.n_batch;
                for (i, &token) in chunk.iter().enumerate() {
                    self.add(token, offset + i, 0, offset + i < rows_wanted)?;
                }
                self.decode()?;
                for i in 0..chunk.len() {
                    let position = offset + i;
                    if position >= rows_wanted {
                        break;
                    }
                    let row = self.row(i as i32)?;
                    let log_z = reward::soft_value(row, Alpha::ONE);
                    let next_logprob = match tokens.get(position + 1) {
                        Some(&next) => Some(
                            logit(row, next).ok_or_else(|| {
                                EngineError::Decode("a token is outside the logits row".into())
                            })? - log_z,
                        ),
                        None => None,
                    };
                    let top = top_tokens(row, top_k)
                        .into_iter()
                        .map(|(id, value)| (LlamaToken(id), f64::from(value) - log_z))
                        .collect();
                    rows.push(RowLogprobs { next_logprob, top });
                }
            }
            Ok(())
        })();
        self.reset_kv();
        result.map(|()| rows)
    }
}

/// The `k` largest entries of `row` as (index, value), largest first, lower index first on ties.
fn top_tokens(row: &[f32], k: usize) -> Vec<(i32, f32)> {
    let mut best: Vec<(i32, f32)> = Vec::with_capacity(k + 1);
    for (index, &value) in row.iter().enumerate() {
        if best.len() == k && best.last().is_some_and(|&(_, worst)| value <= worst) {
            continue;
        }
        let at = best.partition_point(|&(_, v)| v >= value);
        best.insert(at, (index as i32, value));
        best.truncate(k);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::top_tokens;

    #[test]
    fn top_tokens_are_best_first_and_stable_on_ties() {
        let row = [0.5, 2.0, -1.0, 2.0, 1.0];
        assert_eq!(top_tokens(&row, 3), vec![(1, 2.0), (3, 2.0), (4, 1.0)]);
        assert_eq!(top_tokens(&row, 1), vec![(1, 2.0)]);
        assert_eq!(top_tokens(&row, 10).len(), 5);
    }
}
