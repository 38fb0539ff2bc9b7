//! `endorm eval`: how well a model's rewards rank, measured against the baselines of the paper on
//! the same model in the same run.
//!
//! * [`data`] reads preference files (chosen vs. rejected) and ranking files (code completions
//!   with test results).
//! * [`methods`] names what is compared: endorm's four aggregates, the length baselines and the
//!   candidates' consensus (alone and added to each aggregate), the contrasts (neutral context,
//!   reviewer, reference model: each a [`crate::reward::Recipe`], as `/v1/score` combines it), the
//!   judges; [`passes`] scores an item for them, [`judges`] with the verifier and pairwise judges.
//! * [`metrics`] turns scores into accuracy, ranked pass@1 and AUC with 95% intervals.
//! * [`cache`] keeps per-item scores next to the report, so long runs resume.
//! * [`plot`] draws the report as SVG figures (`--plot DIR`).
//! * [`map`] puts the reports of several files (domains) side by side: each method's
//!   length-balanced accuracy per domain and its average.

pub mod cache;
pub mod data;
pub mod judges;
pub mod map;
pub mod methods;
pub mod metrics;
pub mod passes;
pub mod plot;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::engine::{EngineError, KvType, Scorer};
use cache::{Cache, Fingerprint, Outcome, Record, ReferenceModel};
use data::Dataset;
use methods::{ItemRef, Method, Pass, Scores};
use metrics::{Estimate, BOOTSTRAP_RESAMPLES};
use passes::PassOptions;

/// Bumped whenever a method's prompt, layout or score changes, so older cached scores are refused.
pub const METHODS_VERSION: u32 = 2;

/// Seed of the bootstrap intervals (fixed: the same scores give the same report).
const BOOTSTRAP_SEED: u64 = 0x656e_646f_726d;

/// What can stop an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The data file is malformed.
    #[error("{}:{line}: {message}", path.display())]
    Data {
        /// The file.
        path: PathBuf,
        /// 1-based line (0: the file as a whole).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The cache next to the report was made by a different run.
    #[error(
        "{} holds scores of a different run (model, data, principle or methods differ: cached \
         {cached:?}, this run {wanted:?}); delete it, pass --fresh, or choose another --report",
        path.display()
    )]
    CacheMismatch {
        /// The cache file.
        path: PathBuf,
        /// What it was made with.
        cached: Box<Fingerprint>,
        /// What this run would make.
        wanted: Box<Fingerprint>,
    },
    /// A `-reference` method was asked for without a reference model.
    #[error(
        "the methods {methods} subtract the reference model's scores: give one \
         (--reference-model MODEL), or leave these methods out"
    )]
    NoReference {
        /// The methods, comma-separated.
        methods: String,
    },
    /// A figure could not be written.
    #[error(transparent)]
    Plot(#[from] plot::PlotError),
    /// The model failed in a way that would fail every following item too.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// An evaluation run.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    /// The JSONL data file.
    pub data: PathBuf,
    /// The methods, in report order.
    pub methods: Vec<Method>,
    /// Principle (system message) for endorm's reward on preference items.
    pub principle: Option<String>,
    /// Only the first N items.
    pub limit: Option<usize>,
    /// Per-item scores are kept here (see [`cache_path`]); `None` keeps them in memory only.
    pub cache: Option<PathBuf>,
    /// The model's id, for the report and the cache.
    pub model_id: String,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Write SVG figures of the report into this directory.
    pub plot: Option<PathBuf>,
}

/// The reference model of the `-reference` methods: its scorer (same settings as the model's) and
/// its id.
pub struct Reference<'a, 'm> {
    /// A scorer on the reference model.
    pub scorer: &'a mut Scorer<'m>,
    /// The reference model's id, for the report and the cache.
    pub model_id: String,
}

/// Where the per-item scores of a report are kept: `OUT.json` → `OUT.items.jsonl`.
pub fn cache_path(report: &Path) -> PathBuf {
    report.with_extension("items.jsonl")
}

/// The measured quality of one method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodReport {
    /// The method's name.
    pub method: String,
    /// Preference files: accuracy (ties ½), Wilson 95% interval over items.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<Estimate>,
    /// Preference files: accuracy where the chosen answer is longer, where it is shorter, and
    /// their mean, the length-balanced accuracy (over pairs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<metrics::LengthSplit>,
    /// Ranking files: ranked pass@1, bootstrap 95% interval over tasks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass_at_1: Option<Estimate>,
    /// Ranking files: pass-vs-fail AUC over tasks with both, bootstrap 95% interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auc: Option<Estimate>,
    /// Items scored.
    pub scored: usize,
    /// Items that could not be scored (left out of the metrics).
    pub failed: usize,
    /// Seconds of scoring in the pass that computes this method, summed over items (including
    /// items scored by an earlier, resumed run); the four reward aggregates share one pass.
    pub pass_seconds: f64,
    /// Tokens decoded by that pass.
    pub pass_tokens: usize,
}

/// The result of an evaluation: what `--report` writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The model's id.
    pub model: String,
    /// The reference model's id (`--reference-model`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_model: Option<String>,
    /// The data file.
    pub data: String,
    /// `preference` or `ranking`.
    pub kind: String,
    /// Items evaluated.
    pub items: usize,
    /// The principle used for the reward, if any.
    pub principle: Option<String>,
    /// The model's mean reward per token on the neutral text: the `b` of `endo_lc = endo − b·H`.
    #[serde(default)]
    pub baseline_per_token: f64,
    /// Ranking files: the random baseline (mean pass rate over tasks), bootstrap 95% interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub random_pass_at_1: Option<Estimate>,
    /// One entry per method.
    pub methods: Vec<MethodReport>,
    /// How the intervals are computed.
    pub intervals: String,
    /// Wall time of this run in seconds (cached items cost nothing).
    pub wall_seconds: f64,
    /// Items skipped because an earlier run had scored them.
    pub resumed: usize,
    /// The SVG figures written (`--plot`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub figures: Vec<String>,
}

/// Evaluates `config.methods` on `config.data` with `scorer`'s model (and `reference`'s, for the
/// `-reference` methods).
pub fn run(
    scorer: &mut Scorer<'_>,
    mut reference: Option<Reference<'_, '_>>,
    config: &EvalConfig,
) -> Result<Report, EvalError> {
    let started = Instant::now();
    let wants_reference: Vec<&str> = (config.methods.iter())
        .filter(|m| m.pass() == Pass::Reference)
        .map(|m| m.name())
        .collect();
    let reference_model = match &reference {
        None if !wants_reference.is_empty() => {
            return Err(EvalError::NoReference {
                methods: wants_reference.join(", "),
            })
        }
        None => None,
        Some(reference) => {
            // The daemon's check, before any item: a model of another family stops the run here
            // rather than failing every item.
            crate::engine::same_vocabulary(scorer.model(), reference.scorer.model())?;
            Some(ReferenceModel {
                model: reference.model_id.clone(),
                model_bytes: reference.scorer.model().meta().size_bytes,
            })
        }
    };
    let bytes = std::fs::read(&config.data).map_err(|source| EvalError::Io {
        path: config.data.clone(),
        source,
    })?;
    let mut dataset = data::load(&config.data)?;
    if let Some(limit) = config.limit {
        dataset.truncate(limit);
    }
    let fingerprint = Fingerprint {
        model: config.model_id.clone(),
        model_bytes: scorer.model().meta().size_bytes,
        data_hash: cache::fnv1a(&bytes),
        principle: config.principle.clone(),
        methods_version: METHODS_VERSION,
        kv_types: match scorer.kv_types() {
            (KvType::F16, KvType::F16) => None,
            (k, v) => Some(format!("{k}/{v}")),
        },
    };
    let mut cache = match &config.cache {
        Some(path) => Cache::open(path, &fingerprint, reference_model.as_ref())?,
        None => Cache::in_memory(),
    };

    let mut passes: BTreeSet<Pass> = config
        .methods
        .iter()
        .flat_map(|m| m.passes().iter().copied())
        .collect();
    passes.extend(passes.clone().into_iter().filter_map(Pass::needs));
    let items: Vec<ItemRef<'_>> = match &dataset {
        Dataset::Preference(items) => items.iter().map(ItemRef::Preference).collect(),
        Dataset::Ranking(items) => items.iter().map(ItemRef::Ranking).collect(),
    };
    let baseline = scorer.baseline()?.0;
    let options = PassOptions {
        principle: config.principle.clone(),
    };
    let model_passes = passes.iter().filter(|p| p.uses_model()).count();
    let progress = crate::progress::bar(
        config.progress,
        (items.len() * model_passes) as u64,
        "item passes",
    );
    let mut resumed = 0;
    // Item by item, every pass on an item before the next item: a run stopped early leaves every
    // method scored on the same first items, which `--limit` then compares fairly.
    for item in &items {
        progress.set_message(item.id().to_owned());
        let record = |pass: Pass, outcome: Outcome| Record {
            pass,
            id: item.id().to_owned(),
            reference: reference_model.clone().filter(|_| pass == Pass::Reference),
            outcome,
        };
        for &pass in &passes {
            if cache.get(pass, item.id()).is_some() {
                resumed += usize::from(pass.uses_model());
                progress.inc(u64::from(pass.uses_model()));
                continue;
            }
            let needed = match pass.needs().map(|needed| cache.get(needed, item.id())) {
                Some(Some(Outcome::Scored(scores))) => Some(scores),
                // The pass it builds on could not score the item: neither can this one.
                Some(Some(Outcome::Error(error))) => {
                    cache.put(record(pass, Outcome::Error(error.clone())))?;
                    progress.inc(1);
                    continue;
                }
                _ => None,
            };
            let reference = reference.as_mut().map(|r| &mut *r.scorer);
            let outcome = match passes::run_pass(scorer, reference, pass, *item, &options, needed) {
                Ok(scores) => Outcome::Scored(scores),
                Err(e) if e.is_input_error() => Outcome::Error(e.to_string()),
                Err(e) => {
                    progress.abandon();
                    return Err(e.into());
                }
            };
            let record = record(pass, outcome);
            // Length and consensus scores cost next to nothing: recompute them each run rather
            // than cache them (so a cache written before they existed stays valid).
            if pass.uses_model() {
                cache.put(record)?;
                progress.inc(1);
            } else {
                cache.hold(record);
            }
        }
    }
    progress.finish_and_clear();

    let methods = config
        .methods
        .iter()
        .map(|&method| method_report(method, &dataset, &items, &cache))
        .collect();
    let random_pass_at_1 = match &dataset {
        Dataset::Ranking(tasks) => {
            let rates: Vec<f64> = tasks
                .iter()
                .filter_map(|t| metrics::random_pass_at_1(&t.passed))
                .collect();
            metrics::bootstrap_mean(&rates, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED)
        }
        Dataset::Preference(_) => None,
    };
    let mut report = Report {
        model: config.model_id.clone(),
        reference_model: reference_model.map(|r| r.model),
        data: config.data.display().to_string(),
        kind: dataset.kind().into(),
        items: dataset.len(),
        principle: config.principle.clone(),
        baseline_per_token: baseline,
        random_pass_at_1,
        methods,
        intervals: match &dataset {
            Dataset::Preference(_) => "accuracy: Wilson score interval, 95%, n = items".into(),
            Dataset::Ranking(_) => format!(
                "percentile bootstrap over tasks, 95%, {BOOTSTRAP_RESAMPLES} resamples, fixed seed; \
                 length-balanced: passing × failing pairs of a task, the mean of the passing-longer \
                 and passing-shorter groups, over tasks that have both"
            ),
        },
        wall_seconds: started.elapsed().as_secs_f64(),
        resumed,
        figures: Vec::new(),
    };
    if let Some(dir) = &config.plot {
        let figures = figures(&report, &config.methods, &dataset, &items, &cache);
        report.figures = plot::write(dir, &figures)?
            .iter()
            .map(|path| path.display().to_string())
            .collect();
    }
    Ok(report)
}

/// The scores of `method` on `item`, from the passes in `cache`; `None` when the item failed.
fn item_scores(method: Method, item: &ItemRef<'_>, cache: &Cache) -> Option<Scores> {
    passes::method_scores(method, |pass| match cache.get(pass, item.id()) {
        Some(Outcome::Scored(scores)) => Some(scores),
        _ => None,
    })
}

/// What the figures of `report` show: its estimates, and from the per-item scores each method's
/// ROC curve (ranking) or its chosen − rejected differences (preference).
fn figures(
    report: &Report,
    methods: &[Method],
    dataset: &Dataset,
    items: &[ItemRef<'_>],
    cache: &Cache,
) -> plot::Figures {
    let methods = methods
        .iter()
        .zip(&report.methods)
        .map(|(&method, measured)| {
            let per_item = items.iter().map(|item| item_scores(method, item, cache));
            let mut figure = plot::MethodFigure {
                name: measured.method.clone(),
                roc: None,
                differences: None,
                estimates: Vec::new(),
            };
            match dataset {
                Dataset::Ranking(tasks) => {
                    let curves: Vec<_> = tasks
                        .iter()
                        .zip(per_item)
                        .filter_map(|(task, scores)| match scores? {
                            Scores::Candidates(s) => plot::roc_points(&s, &task.passed),
                            Scores::Pairs(_) => None,
                        })
                        .collect();
                    figure.roc = plot::mean_roc(&curves);
                    figure
                        .estimates
                        .extend(measured.pass_at_1.map(|e| ("pass@1", e)));
                }
                Dataset::Preference(prefs) => {
                    let differences: Vec<f64> = prefs
                        .iter()
                        .zip(per_item)
                        .filter_map(|(item, scores)| {
                            preference_differences(item.chosen.len(), item.rejected.len(), &scores?)
                        })
                        .flatten()
                        .collect();
                    figure.differences = Some(differences);
                    figure
                        .estimates
                        .extend(measured.accuracy.map(|e| ("accuracy", e)));
                    figure.estimates.extend(
                        measured
                            .length
                            .and_then(|l| l.balanced)
                            .map(|e| ("length-balanced", e)),
                    );
                }
            }
            figure
        })
        .collect();
    plot::Figures {
        title: format!(
            "{} · {}",
            Path::new(&report.data)
                .file_name()
                .map_or(report.data.clone(), |f| f.to_string_lossy().into_owned()),
            report.model
        ),
        baseline: match &report.random_pass_at_1 {
            Some(random) => Some(("random".into(), random.value)),
            None => (report.kind == "preference").then(|| ("chance".into(), 0.5)),
        },
        methods,
    }
}

fn method_report(
    method: Method,
    dataset: &Dataset,
    items: &[ItemRef<'_>],
    cache: &Cache,
) -> MethodReport {
    let mut scored = 0;
    let mut failed = 0;
    let mut pass_seconds = 0.0;
    let mut pass_tokens = 0;
    // Per item: the method's scores, or None when the item failed.
    let per_item: Vec<Option<Scores>> = items
        .iter()
        .map(|item| {
            if let Some(Outcome::Scored(own)) = cache.get(method.pass(), item.id()) {
                pass_seconds += own.seconds;
                pass_tokens += own.tokens;
            }
            let scores = item_scores(method, item, cache);
            if scores.is_some() {
                scored += 1;
            } else {
                failed += 1;
            }
            scores
        })
        .collect();
    let mut report = MethodReport {
        method: method.name().into(),
        accuracy: None,
        length: None,
        pass_at_1: None,
        auc: None,
        scored,
        failed,
        pass_seconds,
        pass_tokens,
    };
    match dataset {
        Dataset::Preference(prefs) => {
            let outcomes: Vec<Vec<f64>> = prefs
                .iter()
                .zip(&per_item)
                .filter_map(|(item, scores)| {
                    preference_outcomes(item.chosen.len(), item.rejected.len(), scores.as_ref()?)
                })
                .collect();
            report.accuracy = metrics::accuracy(&outcomes);
            let (mut longer, mut shorter) = (Vec::new(), Vec::new());
            for (item, scores) in prefs.iter().zip(&per_item) {
                let Some(outcomes) = scores.as_ref().and_then(|scores| {
                    preference_outcomes(item.chosen.len(), item.rejected.len(), scores)
                }) else {
                    continue;
                };
                // Chosen-major, as `preference_outcomes` lists the pairs.
                let pairs = item
                    .chosen
                    .iter()
                    .flat_map(|c| item.rejected.iter().map(move |r| (c, r)));
                for ((chosen, rejected), outcome) in pairs.zip(outcomes) {
                    let (c, r) = (chosen.chars().count(), rejected.chars().count());
                    match c.cmp(&r) {
                        std::cmp::Ordering::Greater => longer.push(outcome),
                        std::cmp::Ordering::Less => shorter.push(outcome),
                        std::cmp::Ordering::Equal => {}
                    }
                }
            }
            report.length = Some(metrics::length_split(
                &longer,
                &shorter,
                BOOTSTRAP_RESAMPLES,
                BOOTSTRAP_SEED,
            ));
        }
        Dataset::Ranking(tasks) => {
            let mut pass_at_1 = Vec::new();
            let mut auc = Vec::new();
            let mut by_length = Vec::new();
            for (task, scores) in tasks.iter().zip(&per_item) {
                let Some(Scores::Candidates(scores)) = scores else {
                    continue;
                };
                if scores.len() != task.passed.len() {
                    continue;
                }
                pass_at_1.extend(metrics::ranked_pass_at_1(scores, &task.passed));
                auc.extend(metrics::auc(scores, &task.passed));
                let lengths: Vec<usize> =
                    task.completions.iter().map(|c| c.chars().count()).collect();
                by_length.push(metrics::task_length_split(scores, &task.passed, &lengths));
            }
            report.length = Some(metrics::ranking_length_split(
                &by_length,
                BOOTSTRAP_RESAMPLES,
                BOOTSTRAP_SEED,
            ));
            report.pass_at_1 =
                metrics::bootstrap_mean(&pass_at_1, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED);
            report.auc = metrics::bootstrap_mean(&auc, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED);
        }
    }
    report
}

/// `chosen − rejected` of every chosen × rejected pair of a preference item (chosen-major); a
/// pairwise judge's margins as they are.
fn preference_differences(n_chosen: usize, n_rejected: usize, scores: &Scores) -> Option<Vec<f64>> {
    match scores {
        Scores::Candidates(s) if s.len() == n_chosen + n_rejected => Some(
            (0..n_chosen)
                .flat_map(|c| (0..n_rejected).map(move |r| s[c] - s[n_chosen + r]))
                .collect(),
        ),
        Scores::Pairs(margins) if margins.len() == n_chosen * n_rejected => Some(margins.clone()),
        _ => None,
    }
}

/// The outcome of every chosen × rejected pair of a preference item (chosen-major): for finite
/// scores `a − b > 0` exactly when `a > b`, so the difference decides as the scores would.
fn preference_outcomes(n_chosen: usize, n_rejected: usize, scores: &Scores) -> Option<Vec<f64>> {
    let differences = preference_differences(n_chosen, n_rejected, scores)?;
    Some(
        differences
            .into_iter()
            .map(|d| metrics::pair_outcome(d, 0.0))
            .collect(),
    )
}

impl Report {
    /// The report as a plain-text table: one row per method, each metric with its interval.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let reference = (self.reference_model.as_ref())
            .map(|r| format!(" · reference model {r}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{} · {} · {} items · {}{reference}",
            self.data, self.kind, self.items, self.model
        );
        let interval = |e: &Option<Estimate>| match e {
            Some(e) => format!("{:.3} [{:.3}, {:.3}]", e.value, e.lo, e.hi),
            None => "-".into(),
        };
        let metric_names: &[&str] = if self.kind == "ranking" {
            &["pass@1", "AUC", "length-balanced"]
        } else {
            &["accuracy", "length-balanced"]
        };
        // The method column fits the longest name (`logprob_mean+consensus`).
        let width = self
            .methods
            .iter()
            .map(|m| m.method.chars().count())
            .max()
            .unwrap_or(0)
            .max(16);
        let _ = write!(out, "{:<width$}", "method");
        for name in metric_names {
            let _ = write!(out, "  {:<22}", name);
        }
        let _ = writeln!(out, "  {:>6}  {:>6}  {:>9}", "scored", "failed", "pass s");
        if let Some(random) = &self.random_pass_at_1 {
            let _ = writeln!(
                out,
                "{:<width$}  {:<22}  {:<22}  {:<22}",
                "random",
                interval(&Some(*random)),
                "0.500",
                "0.500"
            );
        }
        for m in &self.methods {
            let _ = write!(out, "{:<width$}", m.method);
            let balanced = m.length.and_then(|l| l.balanced);
            if self.kind == "ranking" {
                let _ = write!(
                    out,
                    "  {:<22}  {:<22}  {:<22}",
                    interval(&m.pass_at_1),
                    interval(&m.auc),
                    interval(&balanced)
                );
            } else {
                let _ = write!(
                    out,
                    "  {:<22}  {:<22}",
                    interval(&m.accuracy),
                    interval(&balanced)
                );
            }
            let _ = writeln!(
                out,
                "  {:>6}  {:>6}  {:>9.1}",
                m.scored, m.failed, m.pass_seconds
            );
        }
        let _ = writeln!(out, "95% intervals: {}", self.intervals);
        let _ = writeln!(
            out,
            "endo_lc baseline: {:.4} reward per token on the neutral text",
            self.baseline_per_token
        );
        let _ = write!(
            out,
            "wall time {:.1} s ({} item passes resumed from the cache)",
            self.wall_seconds, self.resumed
        );
        out
    }
}
