//! One llama.cpp context that scores candidates with their context decoded once.
//!
//! The context sits on a prefix-cache slot's sequence. The candidates of a group are merged into
//! their prefix tree (`plan::Tree`): a beginning several of them share is decoded once. Each leaf
//! of the tree gets its own sequence, which shares the context's KV cells (unified KV cache:
//! sharing adds the sequence to the cells, it copies nothing), and each node's token belongs to
//! the sequences of every leaf under it. The nodes are then packed into as few decodes as
//! `n_batch` allows, and only the rows the reward reads are computed: the context's last row, and
//! each node's row except after a terminal token that no candidate goes on from.

use std::time::{Duration, Instant};

use super::cache::{PrefixCache, SlotPlan};
use super::context::{Context, ContextOptions, KvType, Step};
use super::plan::{candidate_chunks, group_candidates, Limits, Overflow, Tree, TreeOrder};
use super::{EngineError, Model, Prepared, Token};
use crate::reward::{self, Alpha, Baseline, RowValue, TokenValues};

/// Per-token values of every candidate, and where the time went.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Scored {
    /// One entry per candidate, in order.
    pub candidates: Vec<Vec<TokenValues>>,
    /// Leading context tokens found in the prefix cache, not decoded again.
    pub cached_tokens: usize,
    /// Candidate tokens decoded: all of them less those the prefix tree shared.
    pub decoded_tokens: usize,
    /// The scoring model's `endo_lc` baseline, when measured ([`Scorer::baseline`]).
    #[serde(default)]
    pub baseline: Option<Baseline>,
    /// Decoding the context.
    pub prompt_time: Duration,
    /// Decoding the candidates and computing their rewards.
    pub candidates_time: Duration,
}

/// A llama.cpp context on a model, owned by one thread at a time.
pub struct Scorer<'m> {
    model: &'m Model,
    pub(super) context: Context<'m>,
    pub(super) cache: PrefixCache,
    cache_enabled: bool,
    cache_tokens: usize,
    prefix_tree: bool,
    kv_types: (KvType, KvType),
}

/// A scoring under way ([`Scorer::score_groups`]): the rows read so far and how many candidates are done.
#[derive(Debug)]
struct Partial {
    rows: Vec<Vec<RowValue>>,
    /// Candidates done, counted in tree order.
    done: usize,
    decoded: usize,
    started: Instant,
    prompt_time: Duration,
    cached_tokens: usize,
}

impl Partial {
    fn complete(&self, prepared: &Prepared) -> bool {
        // `done` counts candidates in tree order, which holds every candidate once.
        self.done == prepared.candidates.len()
    }

    /// The values of every candidate, once every group is done.
    fn finish(
        self,
        prepared: &Prepared,
        alpha: Alpha,
        baseline: Option<Baseline>,
    ) -> Result<Scored, EngineError> {
        Ok(Scored {
            candidates: candidate_values(prepared, &self.rows, alpha)?,
            cached_tokens: self.cached_tokens,
            decoded_tokens: self.decoded,
            baseline,
            prompt_time: self.prompt_time,
            candidates_time: self.started.elapsed() - self.prompt_time,
        })
    }
}

impl<'m> Scorer<'m> {
    /// Creates a context on `model`.
    pub fn new(model: &'m Model, options: ContextOptions) -> Result<Self, EngineError> {
        let cache_slots = ContextOptions::context_slots(options.cache_slots);
        let context = Context::new(
            model,
            options.n_ctx,
            options.n_batch,
            options.n_threads,
            cache_slots,
            options.max_sequences,
            (options.type_k, options.type_v),
        )?;
        Ok(Scorer {
            model,
            context,
            cache: PrefixCache::new(cache_slots as usize),
            cache_enabled: options.cache_slots > 0,
            cache_tokens: options.cache_tokens as usize,
            prefix_tree: options.prefix_tree,
            kv_types: (options.type_k, options.type_v),
        })
    }

    /// How the KV cache stores keys and values (values depend on it: README, "Numerics").
    pub fn kv_types(&self) -> (KvType, KvType) {
        self.kv_types
    }

    /// The model this context runs.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// The context window in tokens.
    pub fn n_ctx(&self) -> usize {
        self.limits().n_ctx
    }

    pub(super) fn limits(&self) -> Limits {
        self.context.limits()
    }

    /// llama.cpp decodes (passes over the weights) this scorer has run: what the tests count
    /// passes with.
    pub fn decodes(&self) -> u64 {
        self.context.decodes()
    }

    /// Whether the prefix cache is on.
    pub(super) fn caches(&self) -> bool {
        self.cache_enabled
    }

    /// The candidates of `prepared` in the order of their prefix tree (the request's order with
    /// the tree off).
    pub(super) fn tree_order(&self, prepared: &Prepared) -> TreeOrder {
        let tokens = prepared.candidates.iter().map(|c| c.tokens.as_slice());
        TreeOrder::new(tokens, self.prefix_tree)
    }

    /// Scores every candidate of `prepared` after its context.
    ///
    /// The context continues the longest matching one in the prefix cache: only the tokens after
    /// the shared prefix are decoded, and none when the same context was scored last.
    pub fn score(&mut self, prepared: &Prepared, alpha: Alpha) -> Result<Scored, EngineError> {
        self.score_unless(prepared, alpha, &|| false)
    }

    /// [`Scorer::score`], asking `cancelled` after the context and after each candidate group:
    /// when it says yes (the client left), stops there with an error and an empty cache slot.
    pub fn score_unless(
        &mut self,
        prepared: &Prepared,
        alpha: Alpha,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Scored, EngineError> {
        self.score_between(prepared, alpha, &mut |_| (), cancelled)
    }

    /// [`Scorer::score_unless`], calling `between` after the context and after each candidate
    /// group but the last: there the worker runs other clients' jobs on this scorer.
    pub(super) fn score_between(
        &mut self,
        prepared: &Prepared,
        alpha: Alpha,
        between: &mut dyn FnMut(&mut Self),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Scored, EngineError> {
        self.validate(prepared)?;
        let order = self.tree_order(prepared);
        // Refuse what cannot fit even in an empty cache, naming the whole window.
        group_candidates(prepared.context.len(), &order, self.limits())
            .map_err(|overflow| self.overflow(overflow))?;
        if !self.cache_enabled {
            self.clear_cache();
        }
        let result = self.score_groups(prepared, alpha, &order, between, cancelled);
        if result.is_err() {
            self.clear_cache();
        }
        result
    }

    /// Decodes the context (only what the prefix cache does not hold), reads each candidate's
    /// first row, then decodes the candidates one group at a time with `between` in between.
    fn score_groups(
        &mut self,
        prepared: &Prepared,
        alpha: Alpha,
        order: &TreeOrder,
        between: &mut dyn FnMut(&mut Self),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Scored, EngineError> {
        let started = Instant::now();
        let mut plan = self.make_room(&prepared.context, order)?;
        let cached_tokens = plan.reused;
        // A long context is decoded one `n_batch` slice at a time, with other clients' jobs
        // between the slices (on other slots: this one is pinned meanwhile) and the job stopped
        // there once its client has left. The slices end where one decode of the whole context
        // would split it, so the values are those of an uninterrupted decode.
        let slice = self.limits().n_batch;
        while !plan.full_hit && prepared.context.len() - plan.reused > slice {
            self.seat_prefix(plan)?;
            let end = plan.reused + slice;
            self.decode_slice(&prepared.context[plan.reused..end], plan.reused, plan.slot)?;
            self.cache.store(plan.slot, &prepared.context[..end], None);
            self.cache.pin(plan.slot);
            between(self);
            if !self.cache_enabled {
                // What the job let in decoded is kept by nobody: its cells are freed now.
                self.clear_cache();
            }
            self.cache.unpin();
            if cancelled() {
                return Err(EngineError::Cancelled);
            }
            plan = self.make_room(&prepared.context, order)?;
        }
        // The context's missing tokens are decoded in the first group's pass, not in one of their
        // own: an editor request that adds a few tokens to a cached file saves a whole pass over
        // the weights (BENCHMARKS.md, "The context in the candidates' decode").
        let mut pending = None;
        let rows = if plan.full_hit {
            self.cache.touch(plan.slot);
            let row = self.cache.last_row(plan.slot).unwrap_or_default();
            first_rows(row, prepared, alpha)?
        } else {
            self.seat_prefix(plan)?;
            pending = Some(plan);
            Vec::new()
        };
        let mut partial = Partial {
            rows,
            done: 0,
            decoded: 0,
            started,
            prompt_time: started.elapsed(),
            cached_tokens,
        };
        while !partial.complete(prepared) {
            // Not while the context is seated but not yet decoded: the job in between could take
            // its slot.
            if pending.is_none() {
                between(self);
                if cancelled() {
                    return Err(EngineError::Cancelled);
                }
            }
            self.advance(prepared, alpha, order, &mut partial, pending.take())?;
        }
        partial.finish(prepared, alpha, self.model.baseline())
    }

    /// Decodes the next candidate group of a scoring under way. With `seated` (the first group),
    /// the context's tokens after `seated.reused` are decoded in the same pass; otherwise the
    /// context is found in the prefix cache, or decoded again where a request run in between
    /// evicted it.
    fn advance(
        &mut self,
        prepared: &Prepared,
        alpha: Alpha,
        order: &TreeOrder,
        partial: &mut Partial,
        seated: Option<SlotPlan>,
    ) -> Result<(), EngineError> {
        let rest = order.tail(partial.done);
        if rest.is_empty() {
            return Ok(());
        }
        let (plan, lead) = match seated {
            Some(plan) => {
                let lead = Lead {
                    tokens: &prepared.context[plan.reused..],
                    start: plan.reused,
                    sequence: plan.slot as i32,
                };
                (plan, Some(lead))
            }
            None => (self.seat_context(prepared, &rest)?, None),
        };
        let limits = Limits {
            n_ctx: self.n_ctx() - self.cache.tokens_besides(plan.slot),
            ..self.limits()
        };
        let groups = group_candidates(prepared.context.len(), &rest, limits)
            .map_err(|overflow| self.overflow(overflow))?;
        let group = groups.first().cloned().unwrap_or(0..rest.len());
        let branch = Branch {
            request: 0,
            prepared,
            context_sequence: plan.slot as i32,
            group: &rest.order[group.clone()],
            alpha,
        };
        let mut rows = [std::mem::take(&mut partial.rows)];
        let mut decoded = [0];
        let lead_row = self.decode_branches(
            &[branch],
            self.cache.slot_count(),
            &mut rows,
            &mut decoded,
            lead,
        );
        let [rows] = rows;
        partial.rows = rows;
        if let Some((row, read)) = lead_row? {
            self.cache.store(plan.slot, &prepared.context, Some(row));
            partial.prompt_time = read - partial.started;
        }
        partial.done += group.len();
        partial.decoded += decoded[0];
        if partial.complete(prepared) {
            self.keep_within_budget(plan.slot);
        }
        Ok(())
    }

    /// Puts the context on a cache slot with the row after it: found there whole, or its
    /// missing part decoded. Makes room for the candidates of `order` beside it.
    fn seat_context(
        &mut self,
        prepared: &Prepared,
        order: &TreeOrder,
    ) -> Result<SlotPlan, EngineError> {
        let context = &prepared.context;
        if !self.caches() && !self.cache.plan(context).full_hit {
            // Evicted by a job run in between, with the cache off: nothing else is worth keeping,
            // and the context goes back into the cells a cold request decodes it into.
            self.clear_cache();
        }
        let plan = self.make_room(context, order)?;
        if plan.full_hit {
            self.cache.touch(plan.slot);
            return Ok(plan);
        }
        self.seat_prefix(plan)?;
        let row = self.decode_context(&context[plan.reused..], plan.reused, plan.slot)?;
        self.cache.store(plan.slot, context, Some(row));
        Ok(plan)
    }

    /// Plans where the context goes and evicts cached contexts, least recently used first, until
    /// the context and all candidates (their tree) fit beside the rest in one group (or nothing
    /// is left to evict).
    fn make_room(&mut self, context: &[Token], order: &TreeOrder) -> Result<SlotPlan, EngineError> {
        let n_ctx = self.n_ctx();
        let (candidates, _) = order.cost(0..order.len());
        let largest = context.len() + order.lens.iter().copied().max().unwrap_or(0);
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
            if others + needed <= n_ctx {
                return Ok(plan);
            }
            let victim = self
                .cache
                .eviction_candidate(plan.slot)
                .filter(|&v| Some(v) != plan.copy_from || others + largest > n_ctx);
            let Some(victim) = victim else {
                return Ok(plan);
            };
            self.context.remove(victim as i32, 0)?;
            self.cache.evict(victim);
            if Some(victim) == plan.copy_from {
                plan = self.cache.plan(context);
            }
        }
    }

    /// Puts the plan's reused prefix into its slot: shared from another slot, or kept in place
    /// with whatever followed it removed.
    fn seat_prefix(&mut self, plan: SlotPlan) -> Result<(), EngineError> {
        let slot = plan.slot as i32;
        match plan.copy_from {
            Some(source) => {
                self.context.remove(slot, 0)?;
                self.context.share(source as i32, slot, Some(plan.reused))?;
            }
            None => self.context.remove(slot, plan.reused)?,
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
            if self.context.remove(victim as i32, 0).is_err() {
                break;
            }
            self.cache.evict(victim);
        }
    }

    /// Empties the KV cache and forgets every cached context: the next request starts cold. A
    /// pinned context (a long one half decoded by a job that let this one run) stays.
    pub fn clear_cache(&mut self) {
        match self.cache.pinned() {
            None => self.context.clear(),
            Some(pinned) => {
                for sequence in (0..=self.context.sequences()).filter(|&s| s != pinned) {
                    // A whole sequence's removal cannot fail; were it to, the next decode would.
                    let _ = self.context.remove(sequence as i32, 0);
                }
            }
        }
        self.cache.clear();
    }

    /// The room a job run between the slices of a long context has beside it: the window less
    /// the pinned context's tokens (the whole window when none is pinned).
    pub(super) fn room_beside_pinned(&self) -> usize {
        let pinned = self
            .cache
            .pinned()
            .map_or(0, |slot| self.cache.tokens_in(slot));
        self.n_ctx().saturating_sub(pinned)
    }

    /// A slot for a job that keeps nothing in the prefix cache (log-probabilities along a
    /// sequence): never the pinned one.
    pub(super) fn free_slot(&self) -> i32 {
        i32::from(self.cache.pinned() == Some(0))
    }

    /// Decodes `tokens` on `slot` from position `start` on, computing no row.
    fn decode_slice(
        &mut self,
        tokens: &[Token],
        start: usize,
        slot: usize,
    ) -> Result<(), EngineError> {
        let steps = along(tokens, start, slot as i32, |_| false);
        self.context.decode(&steps, |_, _| Ok(()))
    }

    /// Decodes `tokens` on `slot` from position `start` on and returns the logits row after them.
    fn decode_context(
        &mut self,
        tokens: &[Token],
        start: usize,
        slot: usize,
    ) -> Result<Vec<f32>, EngineError> {
        let last = tokens.len() - 1;
        let steps = along(tokens, start, slot as i32, |i| i == last);
        let mut row = Vec::new();
        self.context.decode(&steps, |chunk, rows| {
            if chunk.contains(&last) {
                row = rows.row(last - chunk.start).to_vec();
            }
            Ok(())
        })?;
        Ok(row)
    }

    /// Decodes the candidates of `branches` together, each branch's group as its prefix tree whose
    /// leaves get their own sequences (from `first_sequence` on) branched from the context's, and
    /// appends the rows each candidate needs to `rows[branch.request][candidate]` and the tokens
    /// decoded to `decoded[branch.request]`.
    ///
    /// With a `lead` (one branch only), the lead's context tokens come first in the same pass, on
    /// the context's sequence and every leaf's: the row after them gives each candidate of
    /// `rows[0]` its first row, and is returned for the prefix cache with the time it was read.
    pub(super) fn decode_branches(
        &mut self,
        branches: &[Branch<'_>],
        first_sequence: usize,
        rows: &mut [Vec<Vec<RowValue>>],
        decoded: &mut [usize],
        lead: Option<Lead<'_>>,
    ) -> Result<Option<(Vec<f32>, Instant)>, EngineError> {
        // Every node of every branch's tree in decode order, with its branch and node index.
        let mut steps = Vec::new();
        let mut owners = Vec::new();
        let mut trees = Vec::with_capacity(branches.len());
        let mut sequence = first_sequence as i32;
        for (b, branch) in branches.iter().enumerate() {
            let start = branch.prepared.context.len();
            let candidates = branch.group.iter().map(|&index| {
                let candidate = &branch.prepared.candidates[index];
                (candidate.tokens.as_slice(), candidate.terminal)
            });
            let tree = Tree::new(candidates, self.prefix_tree);
            for leaf in 0..tree.leaves() {
                self.context
                    .share(branch.context_sequence, sequence + leaf as i32, None)?;
            }
            for (n, node) in tree.nodes().iter().enumerate() {
                steps.push(Step {
                    token: node.token,
                    position: start + node.depth,
                    sequence: sequence + node.leaves.start as i32,
                    also: sequence + node.leaves.start as i32 + 1
                        ..sequence + node.leaves.end as i32,
                    wants_row: node.wants_row,
                });
                owners.push((b, n));
            }
            decoded[branch.request] += tree.nodes().len();
            sequence += tree.leaves() as i32;
            trees.push(tree);
        }
        let leading = lead.as_ref().map_or(0, |lead| lead.tokens.len());
        if let Some(lead) = &lead {
            // The cache's plan always leaves at least the context's last token to decode.
            let last = leading
                .checked_sub(1)
                .ok_or_else(|| EngineError::Internal("a lead without tokens".into()))?;
            let mut context = along(lead.tokens, lead.start, lead.sequence, |i| i == last);
            for step in &mut context {
                step.also = first_sequence as i32..sequence;
            }
            steps.splice(0..0, context);
        }
        let candidate_rows: Vec<bool> = steps[leading..].iter().map(|s| s.wants_row).collect();
        let Limits {
            n_batch, max_rows, ..
        } = self.limits();
        let pass_rows = self.context.pass_rows();
        let chunks = candidate_chunks(leading, &candidate_rows, n_batch, max_rows, pass_rows);
        let mut lead_row = None;
        self.context.decode_in(&steps, chunks, |chunk, logits| {
            for i in chunk.clone() {
                if !steps[i].wants_row {
                    continue;
                }
                let row = logits.row(i - chunk.start);
                if i < leading {
                    rows[0] = first_rows(row, branches[0].prepared, branches[0].alpha)?;
                    lead_row = Some((row.to_vec(), Instant::now()));
                    continue;
                }
                let (b, n) = owners[i - leading];
                let branch = &branches[b];
                // One V for every candidate through the node; each reads its own next token.
                let v = reward::soft_value(row, branch.alpha);
                for read in trees[b].reads(n) {
                    let q_next = match read.next {
                        Some(token) => Some(
                            logit(row, token).ok_or_else(|| outside_row("a candidate token"))?,
                        ),
                        None => None,
                    };
                    let index = branch.group[read.candidate];
                    rows[branch.request][index].push(RowValue { v, q_next });
                }
            }
            Ok(())
        })?;
        for sequence in first_sequence as i32..sequence {
            self.context.remove(sequence, 0)?;
        }
        Ok(lead_row)
    }

    /// Decodes a token sequence on its own (from position 0), computing logits rows for the tokens
    /// from `rows_from` on and reading none of them: llama.cpp's own speed for the same work, which
    /// `endorm bench` compares the scorer against.
    pub fn decode_plain(&mut self, tokens: &[Token], rows_from: usize) -> Result<(), EngineError> {
        self.check_sequence(tokens)?;
        self.clear_cache();
        let steps = along(tokens, 0, 0, |i| i >= rows_from);
        let decoded = self.context.decode(&steps, |_, _| Ok(()));
        self.clear_cache();
        decoded
    }

    pub(super) fn validate(&self, prepared: &Prepared) -> Result<(), EngineError> {
        if prepared.context.is_empty() {
            return Err(EngineError::InvalidInput("the context is empty".into()));
        }
        if let Some(index) = prepared.candidates.iter().position(|c| c.tokens.is_empty()) {
            return Err(EngineError::InvalidInput(format!(
                "candidate {index} has no tokens"
            )));
        }
        Ok(())
    }

    /// Checks a token sequence decoded on its own from position 0: it fits the window.
    pub(super) fn check_sequence(&self, tokens: &[Token]) -> Result<(), EngineError> {
        if tokens.len() > self.n_ctx() {
            return Err(self.overflow(Overflow {
                candidate: None,
                needed: tokens.len(),
            }));
        }
        Ok(())
    }

    pub(super) fn overflow(&self, overflow: Overflow) -> EngineError {
        EngineError::ContextOverflow {
            what: match overflow.candidate {
                Some(index) => format!("the context with candidate {index}"),
                None => "the context".into(),
            },
            needed: overflow.needed,
            n_ctx: self.n_ctx(),
            n_ctx_train: self.model.meta().n_ctx_train,
        }
    }
}

/// Steps for `tokens` on `sequence` from position `start` on; `wants_row(i)` for the `i`-th.
pub(super) fn along(
    tokens: &[Token],
    start: usize,
    sequence: i32,
    wants_row: impl Fn(usize) -> bool,
) -> Vec<Step> {
    tokens
        .iter()
        .enumerate()
        .map(|(i, &token)| Step {
            token,
            position: start + i,
            sequence,
            also: 0..0,
            wants_row: wants_row(i),
        })
        .collect()
}

/// Context tokens decoded in the candidates' pass: `tokens` from position `start` on `sequence`.
pub(super) struct Lead<'a> {
    pub tokens: &'a [Token],
    pub start: usize,
    pub sequence: i32,
}

/// Some candidates of one request, decoded beside those of other branches.
pub(super) struct Branch<'a> {
    /// Index of the request among those scored together (0 when alone).
    pub request: usize,
    pub prepared: &'a Prepared,
    /// The sequence that holds the request's context.
    pub context_sequence: i32,
    /// Which of its candidates, in their tree order.
    pub group: &'a [usize],
    pub alpha: Alpha,
}

/// Each candidate's per-token values from the rows read for it.
pub(super) fn candidate_values(
    prepared: &Prepared,
    rows: &[Vec<RowValue>],
    alpha: Alpha,
) -> Result<Vec<Vec<TokenValues>>, EngineError> {
    prepared
        .candidates
        .iter()
        .zip(rows)
        .map(|(candidate, rows)| {
            reward::candidate_values(rows, candidate.terminal, alpha).ok_or_else(|| {
                EngineError::Internal("logits rows do not match the candidate".into())
            })
        })
        .collect()
}

/// Each candidate's first row: `V(s_1)` and its first token's logit, from the row after the context.
pub(super) fn first_rows(
    row: &[f32],
    prepared: &Prepared,
    alpha: Alpha,
) -> Result<Vec<Vec<RowValue>>, EngineError> {
    let v = reward::soft_value(row, alpha);
    prepared
        .candidates
        .iter()
        .map(|c| {
            let q = logit(row, c.tokens[0]).ok_or_else(|| outside_row("a candidate token"))?;
            Ok(vec![RowValue { v, q_next: Some(q) }])
        })
        .collect()
}

pub(super) fn logit(row: &[f32], token: Token) -> Option<f64> {
    usize::try_from(token.id())
        .ok()
        .and_then(|i| row.get(i))
        .map(|&x| f64::from(x))
}

pub(super) fn outside_row(what: &str) -> EngineError {
    EngineError::Internal(format!("{what} is outside the logits row"))
}
