//! How the candidates of one request are laid out over llama.cpp sequences and decodes: pure
//! arithmetic, so the limits that would abort llama.cpp are checked where they can be tested.

use std::ops::Range;

/// The capacity of one llama.cpp context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// KV cells (the context window, shared by all sequences).
    pub n_ctx: usize,
    /// Most tokens in one decode.
    pub n_batch: usize,
    /// Most candidate sequences at once (sequence 0 holds the context).
    pub max_sequences: usize,
}

/// A candidate that cannot fit beside its context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow {
    /// Index of the candidate, or `None` when the context alone is too long.
    pub candidate: Option<usize>,
    /// Tokens it needs.
    pub needed: usize,
}

/// Splits candidates (by token count) into consecutive groups that are decoded together: each group
/// fits in the KV cache beside the shared context and in the available sequences.
pub fn group_candidates(
    context_len: usize,
    candidate_lens: &[usize],
    limits: Limits,
) -> Result<Vec<Range<usize>>, Overflow> {
    // The context's last row must be computed, so it needs at least one cell left for a candidate.
    if context_len >= limits.n_ctx {
        return Err(Overflow {
            candidate: None,
            needed: context_len + 1,
        });
    }
    let mut groups = Vec::new();
    let mut start = 0;
    let mut used = context_len;
    for (index, &len) in candidate_lens.iter().enumerate() {
        if context_len + len > limits.n_ctx {
            return Err(Overflow {
                candidate: Some(index),
                needed: context_len + len,
            });
        }
        if used + len > limits.n_ctx || index - start == limits.max_sequences {
            groups.push(start..index);
            start = index;
            used = context_len;
        }
        used += len;
    }
    if start < candidate_lens.len() {
        groups.push(start..candidate_lens.len());
    }
    Ok(groups)
}

/// What the requests of one batched pass take of a context: each context and all its candidates
/// must fit the KV cells and sequences at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassBudget {
    cells: usize,
    sequences: usize,
}

impl PassBudget {
    /// Adds a request of `context_len` tokens and candidates of `candidate_lens` tokens if it fits
    /// beside the requests added so far in `n_ctx` cells and `max_sequences` sequences (one for
    /// its context, one per candidate).
    pub fn try_add(
        &mut self,
        context_len: usize,
        candidate_lens: &[usize],
        n_ctx: usize,
        max_sequences: usize,
    ) -> bool {
        let cells = self.cells + context_len + candidate_lens.iter().sum::<usize>();
        let sequences = self.sequences + 1 + candidate_lens.len();
        if cells > n_ctx || sequences > max_sequences {
            return false;
        }
        *self = PassBudget { cells, sequences };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        n_ctx: 100,
        n_batch: 16,
        max_sequences: 3,
    };

    #[test]
    fn everything_fits_in_one_group() {
        let groups = group_candidates(10, &[5, 5, 5], LIMITS).unwrap();
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0], 0..3);
    }

    #[test]
    fn sequences_limit_the_group_size() {
        assert_eq!(
            group_candidates(10, &[1; 7], LIMITS),
            Ok(vec![0..3, 3..6, 6..7])
        );
    }

    #[test]
    fn the_kv_cache_limits_the_group_size() {
        // 50 + 30 fits, 50 + 30 + 30 does not.
        assert_eq!(
            group_candidates(50, &[30, 30, 20], LIMITS),
            Ok(vec![0..1, 1..3])
        );
    }

    #[test]
    fn oversized_inputs_are_reported() {
        assert_eq!(
            group_candidates(50, &[10, 51], LIMITS),
            Err(Overflow {
                candidate: Some(1),
                needed: 101
            })
        );
        assert_eq!(
            group_candidates(100, &[1], LIMITS),
            Err(Overflow {
                candidate: None,
                needed: 101
            })
        );
    }

    #[test]
    fn no_candidates_no_groups() {
        assert_eq!(group_candidates(10, &[], LIMITS), Ok(vec![]));
    }

    #[test]
    fn a_pass_admits_requests_while_cells_and_sequences_last() {
        let mut budget = PassBudget::default();
        assert!(budget.try_add(40, &[10, 10], 100, 8)); // 60 cells, 3 sequences
        assert!(budget.try_add(20, &[5, 5], 100, 8)); // 90 cells, 6 sequences
        assert!(!budget.try_add(5, &[6], 100, 8), "101 cells");
        assert!(!budget.try_add(1, &[1, 1], 100, 8), "9 sequences");
        assert!(budget.try_add(1, &[1], 100, 8), "92 cells, 8 sequences");
        assert!(!budget.try_add(0, &[], 100, 8), "9 sequences");
    }
}
