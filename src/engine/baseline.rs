//! A model's `endo_lc` baseline: its mean reward per token on a fixed neutral text, measured once
//! per model on a context of it and kept on the [`Model`] (docs/QUALITY.md, "Beyond the paper").
//!
//! The text is scored alone, in the layout of a request with that one candidate, so the figure
//! is the same wherever it is measured (the daemon at load, `endorm eval`, `endorm score`) for
//! the same model and settings. The prefix cache is emptied afterwards: the measurement leaves
//! the context as it found it.

use std::path::Path;

use super::{EngineError, Model, PassKind, Passes, PreparedRequest, Scorer};
use crate::api::{Format, ScoreRequest};
use crate::reward::{Alpha, Baseline, NEUTRAL_REQUEST, NEUTRAL_TEXT};

impl Scorer<'_> {
    /// The model's baseline: measured here on the first call, then the model's record of it.
    pub fn baseline(&mut self) -> Result<Baseline, EngineError> {
        if let Some(baseline) = self.model().baseline() {
            return Ok(baseline);
        }
        let measured = self.measure_baseline();
        self.clear_cache();
        Ok(self.model().set_baseline(measured?))
    }

    /// The baseline measured as a model loads, before its first job: a model whose baseline cannot
    /// be measured (a context too small for the neutral text) is still served, and `endo_lc`
    /// requests on it are refused; the reason is logged here.
    pub(super) fn baseline_at_load(&mut self, path: &Path) -> Option<Baseline> {
        self.baseline()
            .inspect(
                |b| tracing::debug!(path = %path.display(), baseline = b.0, "endo_lc baseline"),
            )
            .inspect_err(|error| {
                tracing::warn!(
                    path = %path.display(),
                    %error,
                    "no endo_lc baseline: `endo_lc` is refused on this model"
                );
            })
            .ok()
    }

    fn measure_baseline(&mut self) -> Result<Baseline, EngineError> {
        let request = neutral_request(self.model());
        let prepared = PreparedRequest::new(self.model(), None, &request, None)?;
        let main = prepared
            .pass(PassKind::Main)
            .ok_or_else(|| EngineError::Internal("the neutral text has no layout".into()))?;
        let mut passes = Passes::default();
        passes.add(PassKind::Main, self.run_pass(&main)?);
        let terms = passes.terms(1, Alpha::ONE)?;
        Ok(Baseline(terms[0].main.endo_mean))
    }
}

/// [`NEUTRAL_TEXT`] as the answer to [`NEUTRAL_REQUEST`] in the model's chat template, or as a
/// raw continuation of nothing for a model without one.
fn neutral_request(model: &Model) -> ScoreRequest {
    let chat = model.meta().chat_template;
    ScoreRequest {
        format: Some(if chat { Format::Chat } else { Format::Raw }),
        prompt: Some(if chat {
            NEUTRAL_REQUEST.into()
        } else {
            String::new()
        }),
        candidates: vec![NEUTRAL_TEXT.into()],
        ..ScoreRequest::default()
    }
}
