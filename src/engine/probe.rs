//! Asking the model questions and reading the probability of its first answer token: the judges
//! of `endorm eval` (LLM-as-a-judge baselines).

use super::prepare::{chat_context, common_prefix};
use super::{Candidate, EngineError, Prepared, Scorer, Token};
use crate::api::Message;
use crate::reward::{Alpha, TokenValues};

/// Log-probabilities of the probe tokens after each question, and the tokens decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Probed {
    /// Per question, `log P(probe)` for each probe, in order.
    pub logprobs: Vec<Vec<f64>>,
    /// Tokens decoded to get them.
    pub tokens: usize,
}

impl Scorer<'_> {
    /// Asks the model each question (a user message, in the chat template with its generation
    /// prompt) and returns `log P(probe)` for the first token of its answer, for every probe.
    ///
    /// The questions of one item share their beginning. They are laid out whichever way decodes
    /// fewer tokens: either the common token prefix of all questions is the context and each
    /// question's rest plus one probe token is a candidate, or each question is its own context
    /// with one-token candidates. A probe is scored as a terminal token: only its log-probability
    /// is read, so the row after it is never computed.
    pub fn probe(&mut self, questions: &[String], probes: &[Token]) -> Result<Probed, EngineError> {
        let model = self.model();
        let contexts = questions
            .iter()
            .map(|q| {
                let message = Message {
                    role: "user".into(),
                    content: q.clone(),
                };
                chat_context(model, &[message])
            })
            .collect::<Result<Vec<_>, _>>()?;
        let slices: Vec<&[Token]> = contexts.iter().map(Vec::as_slice).collect();
        let shared = common_prefix(&slices);
        let cost_shared: usize = shared
            + contexts
                .iter()
                .map(|c| probes.len() * (c.len() - shared + 1))
                .sum::<usize>();
        let cost_alone: usize = contexts.iter().map(|c| c.len() + probes.len()).sum();
        let probe_candidates = |rest: &[Token]| -> Vec<Candidate> {
            probes
                .iter()
                .map(|&p| {
                    let mut tokens = rest.to_vec();
                    tokens.push(p);
                    Candidate {
                        tokens,
                        terminal: true,
                    }
                })
                .collect()
        };
        let last_logprob =
            |values: &Vec<TokenValues>| values.last().map_or(f64::NAN, |v| v.logprob);

        if shared > 0 && cost_shared < cost_alone {
            let prepared = Prepared {
                context: contexts[0][..shared].to_vec(),
                candidates: contexts
                    .iter()
                    .flat_map(|c| probe_candidates(&c[shared..]))
                    .collect(),
            };
            let scored = self.score(&prepared, Alpha::ONE)?;
            let logprobs = scored
                .candidates
                .chunks(probes.len())
                .map(|per_question| per_question.iter().map(last_logprob).collect())
                .collect();
            return Ok(Probed {
                logprobs,
                tokens: cost_shared,
            });
        }
        let mut logprobs = Vec::with_capacity(contexts.len());
        for context in contexts {
            let prepared = Prepared {
                candidates: probe_candidates(&[]),
                context,
            };
            let scored = self.score(&prepared, Alpha::ONE)?;
            logprobs.push(scored.candidates.iter().map(last_logprob).collect());
        }
        Ok(Probed {
            logprobs,
            tokens: cost_alone,
        })
    }
}
