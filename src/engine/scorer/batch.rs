//! Continuous batching: several queued requests scored in one pass, their contexts packed into
//! shared decodes, then all their candidates.
//!
//! Request `r` of a pass keeps its context on sequence `r`; the candidates of all requests follow
//! on the sequences after the contexts. Only requests that fit one pass whole are batched
//! ([`PassBudget`]); a larger one is scored alone, in groups, by [`Scorer::score`].

use std::time::Instant;

use super::{candidate_values, first_row_values, Branch, Scored, Scorer};
use crate::engine::plan::PassBudget;
use crate::engine::{EngineError, Prepared};
use crate::reward::{Alpha, RowValue};

impl Scorer<'_> {
    /// Whether this context batches requests: only with the prefix cache off, where every request
    /// starts cold anyway (with the cache on, each request continues its own cached context).
    pub fn batches(&self) -> bool {
        !self.cache_enabled
    }

    /// Adds `prepared` to `budget` if it fits one pass beside the requests already in it.
    pub fn admit(&self, budget: &mut PassBudget, prepared: &Prepared) -> bool {
        let lens: Vec<usize> = prepared.candidates.iter().map(|c| c.tokens.len()).collect();
        let sequences = self.cache.slot_count() + self.limits.max_sequences;
        budget.try_add(prepared.context.len(), &lens, self.limits.n_ctx, sequences)
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
                return Err(EngineError::Decode(
                    "internal planning error: the requests do not fit one pass".into(),
                ));
            }
        }
        if !self.batches() {
            return Err(EngineError::Decode(
                "internal planning error: batching needs the prefix cache off".into(),
            ));
        }
        self.reset_kv();
        let result = self.score_pass(requests);
        self.reset_kv();
        result
    }

    fn score_pass(&mut self, requests: &[(&Prepared, Alpha)]) -> Result<Vec<Scored>, EngineError> {
        let started = Instant::now();
        let mut rows = self.decode_contexts(requests)?;
        let prompt_time = started.elapsed();

        let branches: Vec<Branch<'_>> = requests
            .iter()
            .enumerate()
            .map(|(request, &(prepared, alpha))| Branch {
                request,
                prepared,
                context_sequence: request as i32,
                group: 0..prepared.candidates.len(),
                alpha,
            })
            .collect();
        self.decode_branches(&branches, requests.len(), &mut rows)?;
        let candidates_time = started.elapsed() - prompt_time;

        requests
            .iter()
            .zip(rows)
            .map(|(&(prepared, alpha), rows)| {
                Ok(Scored {
                    candidates: candidate_values(prepared, &rows, alpha)?,
                    cached_tokens: 0,
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
        let steps: Vec<(usize, usize)> = requests
            .iter()
            .enumerate()
            .flat_map(|(r, (prepared, _))| (0..prepared.context.len()).map(move |t| (r, t)))
            .collect();
        let mut rows = vec![Vec::new(); requests.len()];
        for chunk in steps.chunks(self.limits.n_batch) {
            self.batch.clear();
            for &(r, t) in chunk {
                let context = &requests[r].0.context;
                self.add(context[t], t, r as i32, t + 1 == context.len())?;
            }
            self.decode()?;
            for (batch_index, &(r, t)) in chunk.iter().enumerate() {
                let (prepared, alpha) = requests[r];
                if t + 1 < prepared.context.len() {
                    continue;
                }
                let (v, firsts) = first_row_values(self.row(batch_index as i32)?, prepared, alpha)?;
                rows[r] = firsts
                    .into_iter()
                    .map(|q| vec![RowValue { v, q_next: Some(q) }])
                    .collect();
            }
        }
        Ok(rows)
    }
}
