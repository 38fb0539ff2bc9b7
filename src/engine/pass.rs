//! A pass: what one model scores for a request, as one job. A `/v1/score` request is its main
//! pass plus one pass per option that needs more scoring (`contrast`, `reviewer`,
//! `reference_model`); `/get_reward` is one pass per group of queries. The synchronous scorer
//! ([`Scorer::run_pass`]) and the daemon's worker run a pass the same way: its layouts one after
//! another at its `alpha`, each error naming the layout it happened on.

use super::{EngineError, Prepared, Scored, Scorer};
use crate::reward::Alpha;

/// Which scoring of a request a pass is (and so which term of its score it gives:
/// [`crate::reward::Terms`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PassKind {
    /// The candidates after the request's context.
    Main,
    /// The candidates after the neutral context (`contrast: "neutral"`).
    Neutral,
    /// The instruction after each candidate, one layout per candidate (`reviewer`).
    Reviewer,
    /// The main pass's very tokens on the reference model (`reference_model`).
    Reference,
}

impl PassKind {
    /// Whether the pass runs on the reference model rather than the request's.
    pub fn on_reference(self) -> bool {
        self == PassKind::Reference
    }
}

/// Token layouts scored one after another at one `alpha` on one model.
#[derive(Debug, Clone, PartialEq)]
pub struct Pass {
    /// Which scoring of its request this is.
    pub kind: PassKind,
    /// The entropy coefficient every layout is scored at.
    pub alpha: Alpha,
    /// The layouts, in order.
    pub layouts: Vec<Layout>,
}

/// One layout of a pass: a context and its candidates.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// The tokens.
    pub prepared: Prepared,
    /// What an error on it names (`query[3]`, `reviewer layout of candidate 2`); none for a
    /// request's own layout.
    pub label: Option<String>,
}

impl Pass {
    /// A pass of one unlabelled layout.
    pub fn one(kind: PassKind, alpha: Alpha, prepared: Prepared) -> Pass {
        Pass {
            kind,
            alpha,
            layouts: vec![Layout {
                prepared,
                label: None,
            }],
        }
    }

    /// Tokens of every layout together.
    pub fn tokens(&self) -> usize {
        self.layouts.iter().map(|l| l.prepared.tokens()).sum()
    }

    /// The layout when the pass has exactly one (such passes may share a decode with other
    /// requests' under continuous batching).
    pub fn single(&self) -> Option<&Prepared> {
        match self.layouts.as_slice() {
            [layout] => Some(&layout.prepared),
            _ => None,
        }
    }
}

impl Layout {
    /// Names `error` after this layout, if it has a label.
    pub fn label_error(&self, error: EngineError) -> EngineError {
        match &self.label {
            Some(label) => error.at(label.clone()),
            None => error,
        }
    }
}

impl Scorer<'_> {
    /// Scores every layout of `pass`, one after another.
    pub fn run_pass(&mut self, pass: &Pass) -> Result<Vec<Scored>, EngineError> {
        pass.layouts
            .iter()
            .map(|layout| {
                self.score(&layout.prepared, pass.alpha)
                    .map_err(|e| layout.label_error(e))
            })
            .collect()
    }
}
