//! Continuous batching: several queued requests scored in one pass, their contexts packed into
//! shared decodes, then all their candidates.
//!
//! Request `r` of a pass keeps its context on sequence `r`; the candidates of all requests follow
//! on the sequences after the contexts, each request's as its prefix tree (one sequence a leaf). Only requests that fit one pass whole are batched
//! ([`PassBudget`]); a larger one is scored alone, in groups, by [`Scorer::score`].

use std::time::Instant;

use super::plan::PassBudget;
use super::scorer::{along, candidate_values, first_rows, Branch};
use super::{EngineError, Prepared, Scored, Scorer};
use crate::reward::{Alpha, RowValue};

impl Scorer<'_> {
    /// Whether this context batches requests: only with the prefix cache off, where every request
    /// starts cold anyway (with the cache on, each request continues its own cached context).
    pub(super) fn batches(&self) -> bool {
        !self.caches()
    }

    /// Adds `prepared` to `budget` if it fits one pass beside the requests already in it: its
    /// context and its candidates' prefix tree.
    pub(super) fn admit(&self, budget: &mut PassBudget, prepared: &Prepared) -> bool {
        let order = self.tree_order(prepared);
        let sequences = self.cache.slot_count() + self.limits().max_sequences;
        let tree = order.cost(0..order.len());
        budget.try_add(prepared.context.len(), tree, self.n_ctx(), sequences)
    }

    /// Scores `requests` in one pass. Each result equals scoring that request alone up to
    /// llama.cpp's batch-layout noise (docs/BATCHING.md). Every request must have been admitted to
    /// one [`PassBudget`] by [`Scorer::admit`], and [`Scorer::batches`] must hold.
    pub fn score_batch(
        &mut self,
        requests: &[(&Prepared, Alpha)],
    ) -> Result<Vec<Scored>, EngineError> {
        let mut budget = PassBudget::default();
        for (prepared, _) in requests {
            self.validate(prepared)?;
            if !self.admit(&mut budget, prepared) {
                return Err(EngineError::Internal(
                    "the batched requests do not fit one pass".into(),
                ));
            }
        }
        if !self.batches() {
            return Err(EngineError::Internal(
                "batching needs the prefix cache off".into(),
            ));
        }
        self.clear_cache();
        let result = self.score_pass(requests);
        self.clear_cache();
        result
    }

    fn score_pass(&mut self, requests: &[(&Prepared, Alpha)]) -> Result<Vec<Scored>, EngineError> {
        let started = Instant::now();
        let mut rows = self.decode_contexts(requests)?;
        let prompt_time = started.elapsed();

        let orders: Vec<_> = requests
            .iter()
            .map(|(prepared, _)| self.tree_order(prepared))
            .collect();
        let branches: Vec<Branch<'_>> = requests
            .iter()
            .zip(&orders)
            .enumerate()
            .map(|(request, (&(prepared, alpha), order))| Branch {
                request,
                prepared,
                context_sequence: request as i32,
                group: &order.order,
                alpha,
            })
            .collect();
        let mut decoded = vec![0; requests.len()];
        self.decode_branches(&branches, requests.len(), &mut rows, &mut decoded, None)?;
        let candidates_time = started.elapsed() - prompt_time;

        requests
            .iter()
            .zip(rows)
            .zip(decoded)
            .map(|((&(prepared, alpha), rows), decoded_tokens)| {
                Ok(Scored {
                    candidates: candidate_values(prepared, &rows, alpha)?,
                    cached_tokens: 0,
                    decoded_tokens,
                    baseline: self.model().baseline(),
                    prompt_time,
                    candidates_time,
                })
            })
            .collect()
    }

    /// Decodes every request's context on its own sequence, packed into shared decodes, and
    /// returns per request the first row of each candidate (from the row after its context).
    fn decode_contexts(
        &mut self,
        requests: &[(&Prepared, Alpha)],
    ) -> Result<Vec<Vec<Vec<RowValue>>>, EngineError> {
        let mut steps = Vec::new();
        let mut owners = Vec::new();
        for (r, (prepared, _)) in requests.iter().enumerate() {
            let last = prepared.context.len() - 1;
            steps.extend(along(&prepared.context, 0, r as i32, |t| t == last));
            owners.extend(std::iter::repeat_n(r, prepared.context.len()));
        }
        let mut rows = vec![Vec::new(); requests.len()];
        self.context.decode(&steps, |chunk, logits| {
            for i in chunk.clone().filter(|&i| steps[i].wants_row) {
                let (prepared, alpha) = requests[owners[i]];
                rows[owners[i]] = first_rows(logits.row(i - chunk.start), prepared, alpha)?;
            }
            Ok(())
        })?;
        Ok(rows)
    }
}
