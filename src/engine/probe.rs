//! Asking the model questions and reading the probability of its first answer token: the judges
//! of `endorm eval` (LLM-as-a-judge baselines).
//!
//! A judge asks many questions that differ only in a few places (the same request, a candidate
//! shown first, another shown second), so they are decoded as a two-level prefix tree: the
//! beginning all questions share is decoded once; each group of questions (those the caller gives
//! the same key, e.g. the same candidate shown first) decodes its own common part once on a
//! sequence that shares the first level's cells; each question then decodes only what follows on a
//! sequence branched from its group's. Every probe is read from the one logits row after the
//! question's last token, so asking for several probes costs nothing more.

use std::ops::Range;

use super::plan::{Limits, Overflow};
use super::prepare::{chat_context, common_prefix};
use super::scorer::{along, logit, outside_row};
use super::{EngineError, Scorer, Token};
use crate::api::Message;
use crate::reward::{self, Alpha};

/// Log-probabilities of the probe tokens after each question, and the tokens decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Probed {
    /// Per question, `log P(probe)` for each probe, in order.
    pub logprobs: Vec<Vec<f64>>,
    /// Tokens decoded to get them.
    pub tokens: usize,
}

/// The two-level layout of some token sequences (the questions).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tree {
    /// Leading tokens every question shares, decoded once.
    shared: usize,
    /// The groups, in order of their first question.
    stems: Vec<Stem>,
}

/// One group of questions: its common part `shared..end`, decoded once for the group.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stem {
    end: usize,
    /// Indices of its questions, in order.
    questions: Vec<usize>,
}

impl Tree {
    /// Lays out `sequences`, grouped by `keys` (one per sequence) in groups of at most `max_group`
    /// (a larger one is split). Every sequence keeps at least its last token below the stems, so
    /// each question has a row of its own to read.
    fn new<T: PartialEq>(sequences: &[&[T]], keys: &[usize], max_group: usize) -> Tree {
        let min_len = sequences.iter().map(|s| s.len()).min().unwrap_or(0);
        let shared = common_prefix(sequences).min(min_len.saturating_sub(1));
        let mut stems: Vec<(usize, Stem)> = Vec::new();
        for (index, &key) in keys.iter().enumerate() {
            let open = stems
                .iter_mut()
                .rev()
                .find(|(k, stem)| *k == key && stem.questions.len() < max_group.max(1));
            match open {
                Some((_, stem)) => stem.questions.push(index),
                None => stems.push((
                    key,
                    Stem {
                        end: 0,
                        questions: vec![index],
                    },
                )),
            }
        }
        let stems = stems
            .into_iter()
            .map(|(_, mut stem)| {
                let members: Vec<&[T]> = stem.questions.iter().map(|&q| sequences[q]).collect();
                let shortest = members.iter().map(|s| s.len()).min().unwrap_or(0);
                stem.end = common_prefix(&members)
                    .min(shortest.saturating_sub(1))
                    .max(shared);
                stem
            })
            .collect();
        Tree { shared, stems }
    }

    /// Tokens the tree decodes in all.
    fn tokens(&self, lens: &[usize]) -> usize {
        self.shared
            + self
                .stems
                .iter()
                .map(|stem| {
                    stem.end - self.shared
                        + stem
                            .questions
                            .iter()
                            .map(|&q| lens[q] - stem.end)
                            .sum::<usize>()
                })
                .sum::<usize>()
    }

    /// Splits the stems into consecutive waves decoded together: each wave's stems and questions
    /// fit beside the shared part in the KV cells and in the candidate sequences.
    fn waves(&self, lens: &[usize], limits: Limits) -> Result<Vec<Range<usize>>, Overflow> {
        let cost = |stem: &Stem| {
            let cells = stem.end - self.shared
                + stem
                    .questions
                    .iter()
                    .map(|&q| lens[q] - stem.end)
                    .sum::<usize>();
            let sequences = usize::from(stem.end > self.shared) + stem.questions.len();
            (cells, sequences)
        };
        let mut waves = Vec::new();
        let (mut start, mut cells, mut sequences) = (0, self.shared, 0);
        for (index, stem) in self.stems.iter().enumerate() {
            let (c, s) = cost(stem);
            if self.shared + c > limits.n_ctx || s > limits.max_sequences {
                let needed = stem.questions.iter().map(|&q| lens[q]).max().unwrap_or(0);
                return Err(Overflow {
                    candidate: None,
                    needed: needed.max(self.shared + c),
                });
            }
            if cells + c > limits.n_ctx || sequences + s > limits.max_sequences {
                waves.push(start..index);
                (start, cells, sequences) = (index, self.shared, 0);
            }
            cells += c;
            sequences += s;
        }
        if start < self.stems.len() {
            waves.push(start..self.stems.len());
        }
        Ok(waves)
    }
}

impl Scorer<'_> {
    /// Asks the model each question (a user message, in the chat template with its generation
    /// prompt) and returns `log P(probe)` for the first token of its answer, for every probe.
    /// Questions with the same key share the part after the beginning common to all of them (the
    /// module's two-level layout); any keys give the same values up to layout noise.
    pub fn probe(
        &mut self,
        questions: &[(usize, String)],
        probes: &[Token],
    ) -> Result<Probed, EngineError> {
        if questions.is_empty() {
            return Ok(Probed {
                logprobs: Vec::new(),
                tokens: 0,
            });
        }
        let model = self.model();
        let contexts = questions
            .iter()
            .map(|(_, q)| {
                let message = Message {
                    role: "user".into(),
                    content: q.clone(),
                };
                chat_context(model, &[message])
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sequences: Vec<&[Token]> = contexts.iter().map(Vec::as_slice).collect();
        let keys: Vec<usize> = questions.iter().map(|(key, _)| *key).collect();
        // A stem takes a sequence besides its questions'.
        let max_group = self.limits().max_sequences.saturating_sub(1);
        let tree = Tree::new(&sequences, &keys, max_group);
        let lens: Vec<usize> = contexts.iter().map(Vec::len).collect();
        let waves = tree
            .waves(&lens, self.limits())
            .map_err(|overflow| self.overflow(overflow))?;

        // The tree owns the KV cache while it runs; the prefix cache starts cold after it.
        self.clear_cache();
        let result = self.probe_tree(&tree, &waves, &contexts, probes);
        self.clear_cache();
        Ok(Probed {
            logprobs: result?,
            tokens: tree.tokens(&lens),
        })
    }

    fn probe_tree(
        &mut self,
        tree: &Tree,
        waves: &[Range<usize>],
        contexts: &[Vec<Token>],
        probes: &[Token],
    ) -> Result<Vec<Vec<f64>>, EngineError> {
        const BASE: i32 = 0;
        let first_sequence = self.cache.slot_count() as i32;
        if tree.shared > 0 {
            let steps = along(&contexts[0][..tree.shared], 0, BASE, |_| false);
            self.context.decode(&steps, |_, _| Ok(()))?;
        }
        let mut logprobs = vec![Vec::new(); contexts.len()];
        for wave in waves {
            let stems = &tree.stems[wave.clone()];
            // First level below the shared part: each stem on its own sequence.
            let mut sequence = first_sequence;
            let mut stem_steps = Vec::new();
            let mut stem_sequences = Vec::with_capacity(stems.len());
            for stem in stems {
                if stem.end == tree.shared {
                    stem_sequences.push(BASE);
                    continue;
                }
                self.context.share(BASE, sequence, None)?;
                let first = &contexts[stem.questions[0]];
                stem_steps.extend(along(
                    &first[tree.shared..stem.end],
                    tree.shared,
                    sequence,
                    |_| false,
                ));
                stem_sequences.push(sequence);
                sequence += 1;
            }
            self.context.decode(&stem_steps, |_, _| Ok(()))?;
            // Second level: each question's rest, reading the row after its last token.
            let mut steps = Vec::new();
            let mut owners = Vec::new();
            for (stem, &stem_sequence) in stems.iter().zip(&stem_sequences) {
                for &question in &stem.questions {
                    self.context.share(stem_sequence, sequence, None)?;
                    let rest = &contexts[question][stem.end..];
                    let last = rest.len() - 1;
                    steps.extend(along(rest, stem.end, sequence, |i| i == last));
                    owners.extend(rest.iter().map(|_| question));
                    sequence += 1;
                }
            }
            self.context.decode(&steps, |chunk, rows| {
                for i in chunk.clone().filter(|&i| steps[i].wants_row) {
                    let row = rows.row(i - chunk.start);
                    let v = reward::soft_value(row, Alpha::ONE);
                    logprobs[owners[i]] = probes
                        .iter()
                        .map(|&p| logit(row, p).map(|q| q - v))
                        .collect::<Option<_>>()
                        .ok_or_else(|| outside_row("a probe token"))?;
                }
                Ok(())
            })?;
            for s in first_sequence..sequence {
                self.context.remove(s, 0)?;
            }
        }
        Ok(logprobs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        n_ctx: 100,
        n_batch: 64,
        max_sequences: 8,
        max_rows: 64,
    };

    #[test]
    fn two_levels_share_the_common_beginning_then_the_group() {
        let (a, b, c) = ([1, 2, 3, 4, 5], [1, 2, 3, 4, 6], [1, 2, 7, 8]);
        let tree = Tree::new::<i32>(&[&a, &b, &c], &[0, 0, 1], 8);
        assert_eq!(tree.shared, 2);
        assert_eq!(
            tree.stems,
            vec![
                Stem {
                    end: 4,
                    questions: vec![0, 1]
                },
                // A group of one keeps its last token below the stem.
                Stem {
                    end: 3,
                    questions: vec![2]
                },
            ]
        );
        // 2 shared + (2 stem + 1 + 1) + (1 stem + 1) = 8 of the 14 tokens.
        assert_eq!(tree.tokens(&[5, 5, 4]), 8);
    }

    #[test]
    fn every_question_keeps_a_token_of_its_own() {
        let (a, b) = ([1, 2, 3], [1, 2, 3, 4]);
        let tree = Tree::new::<i32>(&[&a, &b], &[0, 0], 8);
        assert_eq!(tree.shared, 2);
        assert_eq!(tree.stems[0].end, 2);
        assert_eq!(tree.tokens(&[3, 4]), 2 + 1 + 2);
        let same = Tree::new::<i32>(&[&a, &a], &[0, 1], 8);
        assert_eq!((same.shared, same.tokens(&[3, 3])), (2, 4));
    }

    #[test]
    fn a_group_larger_than_the_sequences_is_split() {
        let (a, b, c) = ([1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 6]);
        let tree = Tree::new::<i32>(&[&a, &b, &c, &[9, 9]], &[7, 7, 7, 8], 2);
        let groups: Vec<&[usize]> = tree.stems.iter().map(|s| s.questions.as_slice()).collect();
        assert_eq!(groups, vec![&[0, 1][..], &[2], &[3]]);
    }

    #[test]
    fn waves_fit_the_cells_and_the_sequences() {
        // Five groups of two 30-token questions sharing 10 tokens and a 10-token stem each:
        // 10 + 20 cells and 3 sequences a group.
        let q: Vec<Vec<usize>> = (0..10)
            .map(|i| {
                let mut s: Vec<usize> = (0..10).collect();
                s.extend((0..10).map(|t| 100 + 10 * (i / 2) + t));
                s.extend((0..10).map(|t| 1000 + 10 * i + t));
                s
            })
            .collect();
        let slices: Vec<&[usize]> = q.iter().map(Vec::as_slice).collect();
        let keys: Vec<usize> = (0..10).map(|i| i / 2).collect();
        let tree = Tree::new(&slices, &keys, 8);
        assert_eq!(tree.shared, 10);
        let lens = vec![30; 10];
        // 100 cells: 10 shared + 3 groups of 30; 8 sequences: 2 groups of 3.
        assert_eq!(tree.waves(&lens, LIMITS), Ok(vec![0..2, 2..4, 4..5]));
        let wide = Limits {
            max_sequences: 64,
            ..LIMITS
        };
        assert_eq!(tree.waves(&lens, wide), Ok(vec![0..3, 3..5]));
        let tight = Limits {
            n_ctx: 35,
            ..LIMITS
        };
        assert!(tree.waves(&lens, tight).is_err());
    }
}
