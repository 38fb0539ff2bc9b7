//! How the candidates of one request are laid out over llama.cpp sequences and decodes: pure
//! arithmetic, so the limits that would abort llama.cpp are checked where they can be tested.
//! The candidates' prefix tree (which tokens several candidates share) is in [`tree`].

use std::ops::Range;

mod tree;

pub use tree::{Tree, TreeOrder};

/// The capacity of one llama.cpp context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// KV cells (the context window, shared by all sequences).
    pub n_ctx: usize,
    /// Most tokens in one decode.
    pub n_batch: usize,
    /// Most candidate sequences at once (sequence 0 holds the context).
    pub max_sequences: usize,
    /// Most logits rows one decode computes ([`logits_rows`]).
    pub max_rows: usize,
}

/// Query rows llama.cpp's CPU flash attention works on at a time: a decode of 65 tokens costs it as
/// much as one of 128.
const ATTENTION_TILE: usize = 64;

/// Most logits rows one decode asks for. llama.cpp sizes its output buffer for the most rows any
/// decode asked for times the vocabulary, and never shrinks it; the graph's output tensor is as
/// large. So as many f32 rows as `budget_bytes` hold, in whole attention tiles, but at least one
/// tile (llama.cpp reserves a row per sequence, 66 by default, whatever is asked) and at most
/// `n_batch`.
pub fn logits_rows(budget_bytes: usize, n_vocab: usize, n_batch: usize) -> usize {
    let row_bytes = n_vocab.max(1) * std::mem::size_of::<f32>();
    let tiles = budget_bytes / row_bytes / ATTENTION_TILE;
    (tiles.max(1) * ATTENTION_TILE).min(n_batch).max(1)
}

/// Most logits rows a decode that holds a whole candidate pass may ask for: as many as
/// `budget_bytes` hold, not rounded to attention tiles (one decode of 75 rows beats a decode of
/// 64 and another of 11), but never fewer than `max_rows` nor more than `n_batch`.
pub fn pass_rows(budget_bytes: usize, n_vocab: usize, n_batch: usize, max_rows: usize) -> usize {
    let row_bytes = n_vocab.max(1) * std::mem::size_of::<f32>();
    (budget_bytes / row_bytes).max(max_rows).min(n_batch.max(1))
}

/// Splits the steps of a decode, given by whether each wants its logits row, into consecutive
/// llama.cpp decodes of at most `n_batch` tokens and at most `max_rows` rows.
pub fn decode_chunks(
    wants_row: impl IntoIterator<Item = bool>,
    n_batch: usize,
    max_rows: usize,
) -> Vec<Range<usize>> {
    let (n_batch, max_rows) = (n_batch.max(1), max_rows.max(1));
    let mut chunks = Vec::new();
    let (mut start, mut rows, mut end) = (0, 0, 0);
    for wants in wants_row {
        if end - start == n_batch || (wants && rows == max_rows) {
            chunks.push(start..end);
            (start, rows) = (end, 0);
        }
        rows += usize::from(wants);
        end += 1;
    }
    if end > start {
        chunks.push(start..end);
    }
    chunks
}

/// Decodes of at least this many tokens run llama.cpp's tiled CPU kernels, smaller ones its
/// row-by-row kernels; the two sum in different orders.
const TILED_FROM: usize = 64;

/// The decodes of a candidate pass: `lead` context tokens (the last wanting its row; 0 for none)
/// followed by candidate steps that want rows as `wants_row` says, as ranges of indices into
/// that sequence of steps.
///
/// Candidates whose rows all fit in `pass_rows` (and tokens in `n_batch`) take one decode;
/// otherwise they are split from their end, so that the short remainder is the *first* decode
/// and the others hold `max_rows` rows. The lead joins the first candidate decode where it fits
/// without taking it across [`TILED_FROM`] (llama.cpp's kernels compute a token's row the same
/// whatever else shares a decode of the same kind), and otherwise is decoded before it on its
/// own. Either way the candidates' decodes are those a full prefix-cache hit (no lead) runs, so
/// an editor request that adds a few tokens to a cached file saves a pass and still gives what
/// the same request gives again.
pub fn candidate_chunks(
    lead: usize,
    wants_row: &[bool],
    n_batch: usize,
    max_rows: usize,
    pass_rows: usize,
) -> Vec<Range<usize>> {
    let n = wants_row.len();
    let rows_in = |range: Range<usize>| wants_row[range].iter().filter(|&&w| w).count();
    let mut candidates: Vec<Range<usize>> = if n == 0 {
        Vec::new()
    } else if n <= n_batch && rows_in(0..n) <= pass_rows {
        std::iter::once(lead..lead + n).collect()
    } else {
        // Split the reversed candidates, then turn the chunks around: the remainder comes first.
        decode_chunks(wants_row.iter().rev().copied(), n_batch, max_rows)
            .into_iter()
            .rev()
            .map(|chunk| lead + n - chunk.end..lead + n - chunk.start)
            .collect()
    };
    let alone = |lead: usize| decode_chunks((0..lead).map(|i| i + 1 == lead), n_batch, max_rows);
    let Some(first) = candidates.first().cloned() else {
        return alone(lead);
    };
    let fits = lead + first.len() <= n_batch
        && rows_in(first.start - lead..first.end - lead) < pass_rows.max(max_rows)
        && (lead + first.len() >= TILED_FROM) == (first.len() >= TILED_FROM);
    if lead > 0 && fits {
        candidates[0] = 0..first.end;
        return candidates;
    }
    let mut chunks = alone(lead);
    chunks.extend(candidates);
    chunks
}

/// A candidate that cannot fit beside its context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow {
    /// Index of the candidate, or `None` when the context alone is too long.
    pub candidate: Option<usize>,
    /// Tokens it needs.
    pub needed: usize,
}

/// Splits candidates, in their tree order, into consecutive groups that are decoded together: each
/// group's tree (its nodes: the tokens it decodes) fits in the KV cache beside the shared context,
/// and its leaves in the available sequences. The groups are ranges of positions in `order`.
pub fn group_candidates(
    context_len: usize,
    order: &TreeOrder,
    limits: Limits,
) -> Result<Vec<Range<usize>>, Overflow> {
    // The context's last row must be computed, so it needs at least one cell left for a candidate.
    if context_len >= limits.n_ctx {
        return Err(Overflow {
            candidate: None,
            needed: context_len + 1,
        });
    }
    // The first candidate, in the request's order, that cannot fit beside the context even alone.
    let too_long = (0..order.len())
        .filter(|&k| context_len + order.lens[k] > limits.n_ctx)
        .min_by_key(|&k| order.order[k]);
    if let Some(k) = too_long {
        return Err(Overflow {
            candidate: Some(order.order[k]),
            needed: context_len + order.lens[k],
        });
    }
    let mut groups = Vec::new();
    let mut start = 0;
    let (mut cells, mut sequences) = (context_len, 0);
    for k in 0..order.len() {
        let (more_cells, more_sequences) = order.added(k, k == start);
        if cells + more_cells > limits.n_ctx || sequences + more_sequences > limits.max_sequences {
            groups.push(start..k);
            start = k;
            (cells, sequences) = (context_len, 0);
            let (first_cells, first_sequences) = order.added(k, true);
            cells += first_cells;
            sequences += first_sequences;
            continue;
        }
        cells += more_cells;
        sequences += more_sequences;
    }
    if start < order.len() {
        groups.push(start..order.len());
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
    /// Adds a request of `context_len` tokens whose candidates' tree takes `cells` cells and
    /// `leaves` sequences ([`TreeOrder::cost`]) if it fits beside the requests added so far in
    /// `n_ctx` cells and `max_sequences` sequences (one for its context, one per leaf).
    pub fn try_add(
        &mut self,
        context_len: usize,
        (cells, leaves): (usize, usize),
        n_ctx: usize,
        max_sequences: usize,
    ) -> bool {
        let cells = self.cells + context_len + cells;
        let sequences = self.sequences + 1 + leaves;
        if cells > n_ctx || sequences > max_sequences {
            return false;
        }
        *self = PassBudget { cells, sequences };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::Token;
    use super::*;

    const LIMITS: Limits = Limits {
        n_ctx: 100,
        n_batch: 16,
        max_sequences: 3,
        max_rows: 16,
    };

    #[test]
    fn decodes_end_at_n_batch_tokens_or_max_rows_rows() {
        assert_eq!(decode_chunks([false; 5], 2, 1), vec![0..2, 2..4, 4..5]);
        // Rows 1, 2, 4, 5 wanted, two per decode: the third wanted row starts a new decode.
        let wants = [false, true, true, false, true, true];
        assert_eq!(decode_chunks(wants, 16, 2), vec![0..4, 4..6]);
        assert_eq!(decode_chunks(wants, 3, 2), vec![0..3, 3..6]);
        assert_eq!(decode_chunks(wants, 16, 16), vec![0..6]);
        assert_eq!(decode_chunks([], 16, 2), Vec::<Range<usize>>::new());
    }

    #[test]
    fn rows_fit_the_budget_in_whole_attention_tiles() {
        let mib = 1 << 20;
        // SmolLM2: 49,152 × 4 bytes a row; 85 rows fit 16 MiB, one tile of 64 is taken.
        assert_eq!(logits_rows(16 * mib, 49_152, 512), 64);
        assert_eq!(logits_rows(32 * mib, 49_152, 512), 128);
        // Qwen2.5: 151,936 entries a row, 27 in 16 MiB: still one tile.
        assert_eq!(logits_rows(16 * mib, 151_936, 512), 64);
        assert_eq!(logits_rows(16 * mib, 49_152, 63), 63);
        assert_eq!(logits_rows(0, 0, 0), 1);
    }

    /// Candidates of these lengths sharing nothing.
    fn unshared(lens: &[usize]) -> TreeOrder {
        let candidates: Vec<Vec<Token>> = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| vec![Token(i as i32); len])
            .collect();
        TreeOrder::new(candidates.iter().map(Vec::as_slice), true)
    }

    #[test]
    fn everything_fits_in_one_group() {
        let groups = group_candidates(10, &unshared(&[5, 5, 5]), LIMITS).unwrap();
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0], 0..3);
    }

    #[test]
    fn sequences_limit_the_group_size() {
        assert_eq!(
            group_candidates(10, &unshared(&[1; 7]), LIMITS),
            Ok(vec![0..3, 3..6, 6..7])
        );
    }

    #[test]
    fn the_kv_cache_limits_the_group_size() {
        // 50 + 30 fits, 50 + 30 + 30 does not.
        assert_eq!(
            group_candidates(50, &unshared(&[30, 30, 20]), LIMITS),
            Ok(vec![0..1, 1..3])
        );
    }

    #[test]
    fn oversized_inputs_are_reported() {
        assert_eq!(
            group_candidates(50, &unshared(&[10, 51]), LIMITS),
            Err(Overflow {
                candidate: Some(1),
                needed: 101
            })
        );
        assert_eq!(
            group_candidates(100, &unshared(&[1]), LIMITS),
            Err(Overflow {
                candidate: None,
                needed: 101
            })
        );
    }

    fn one(chunk: Range<usize>) -> Vec<Range<usize>> {
        vec![chunk]
    }

    #[test]
    fn candidates_split_from_their_end_and_a_lead_joins_the_first_decode_of_the_same_kind() {
        let rows = |n: usize| vec![true; n];
        // 74 candidate tokens in one decode of 74 rows (SmolLM2's budget holds 85): four typed
        // context tokens join it, tiled either way.
        assert_eq!(candidate_chunks(4, &rows(74), 512, 64, 85), one(0..78));
        // Without a lead, the same candidate decode.
        assert_eq!(candidate_chunks(0, &rows(74), 512, 64, 85).len(), 1);
        // A budget of 64 rows: 10, then 64; the lead joins the 10, row by row either way.
        assert_eq!(
            candidate_chunks(4, &rows(74), 512, 64, 64),
            vec![0..14, 14..78]
        );
        assert_eq!(
            candidate_chunks(0, &rows(74), 512, 64, 64),
            vec![0..10, 10..74]
        );
        // 60 candidate tokens alone run row by row; six more would make the decode tiled.
        assert_eq!(
            candidate_chunks(6, &rows(60), 512, 64, 85),
            vec![0..6, 6..66]
        );
        // A cold context of 200 tokens: its own decode (one row: the last token's).
        assert_eq!(
            candidate_chunks(200, &rows(15), 512, 64, 85),
            vec![0..200, 200..215]
        );
        // 128 candidate rows leave no remainder: the lead joins the first 64, tiled either way,
        // its row within the budget.
        assert_eq!(
            candidate_chunks(3, &rows(128), 512, 64, 85),
            vec![0..67, 67..131]
        );
        // Tokens without a row (a terminal token) ride along; n_batch bounds every decode.
        let mut terminal = rows(6);
        terminal[5] = false;
        assert_eq!(
            candidate_chunks(3, &terminal, 4, 64, 85),
            vec![0..3, 3..5, 5..9]
        );
        // No candidates: the lead alone.
        assert_eq!(candidate_chunks(5, &[], 512, 64, 85), one(0..5));
    }

    #[test]
    fn a_whole_pass_may_use_the_unrounded_budget() {
        // 16 MiB of 49,152-entry rows: 85; never below the tile-rounded cap, never above n_batch.
        assert_eq!(pass_rows(16 << 20, 49_152, 512, 64), 85);
        assert_eq!(pass_rows(16 << 20, 151_936, 512, 64), 64);
        assert_eq!(pass_rows(16 << 20, 49_152, 63, 63), 63);
    }

    #[test]
    fn a_shared_beginning_counts_once_in_a_groups_cells_and_a_continuation_takes_no_sequence() {
        let ids = |ids: &[i32]| ids.iter().map(|&i| Token(i)).collect::<Vec<_>>();
        // 30 shared tokens, then 10 of each candidate's own; the third continues the second.
        let stem: Vec<i32> = (100..130).collect();
        let with = |tail: &[i32]| ids(&[stem.as_slice(), tail].concat());
        let candidates = [
            with(&[1; 10]),
            with(&[2; 10]),
            with(&[[2; 10], [3; 10]].concat()),
            ids(&[9; 5]),
        ];
        let order = TreeOrder::new(candidates.iter().map(Vec::as_slice), true);
        assert_eq!(order.order, [0, 1, 2, 3]);
        // 30 + 10 + 10 + 10 + 5 cells; sequences: 0, 1 (2 continues 1's leaf), 3.
        assert_eq!(order.cost(0..4), (65, 3));
        let groups = group_candidates(10, &order, LIMITS).unwrap();
        assert_eq!((groups.len(), groups[0].clone()), (1, 0..4));
        // Unshared, the same lengths take 40 + 40 + 50 + 5 cells: two groups in 100 cells.
        let apart = TreeOrder::new(candidates.iter().map(Vec::as_slice), false);
        assert_eq!(apart.cost(0..4), (135, 4));
        assert_eq!(group_candidates(10, &apart, LIMITS), Ok(vec![0..2, 2..4]));
        // Beside 50 context tokens the tree is cut after the second candidate; the group that
        // starts inside the tree decodes the shared beginning again (50 + 5 cells).
        assert_eq!(
            group_candidates(50, &order, LIMITS),
            Ok(vec![0..2, 2..3, 3..4])
        );
        assert_eq!(order.tail(2).cost(0..2), (55, 2));
    }

    #[test]
    fn no_candidates_no_groups() {
        assert_eq!(group_candidates(10, &unshared(&[]), LIMITS), Ok(vec![]));
    }

    #[test]
    fn a_pass_admits_requests_while_cells_and_sequences_last() {
        let mut budget = PassBudget::default();
        assert!(budget.try_add(40, (20, 2), 100, 8)); // 60 cells, 3 sequences
        assert!(budget.try_add(20, (10, 2), 100, 8)); // 90 cells, 6 sequences
        assert!(!budget.try_add(5, (6, 1), 100, 8), "101 cells");
        assert!(!budget.try_add(1, (2, 2), 100, 8), "9 sequences");
        assert!(budget.try_add(1, (1, 1), 100, 8), "92 cells, 8 sequences");
        assert!(!budget.try_add(0, (0, 0), 100, 8), "9 sequences");
    }
}
