//! `endorm bench`: the shared-prefix scorer against the two ways to do the same work without it,
//! in one process on one context, so the ratios hold whatever the machine.
//!
//! Every timed request starts with an empty prefix cache: these are cold requests.
//!
//! * **shared** — the scorer: the context decoded once, all candidates in packed decodes;
//! * **naive** — each candidate scored alone, its context decoded again every time;
//! * **plain** — llama.cpp's own speed: the same number of tokens as one sequence, computing the
//!   same number of logits rows and reading none, the limit any scorer can reach.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::engine::{prepare, EngineError, Scorer};
use crate::reward::Alpha;

/// The shape of the benchmark.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Shape {
    /// Tokens of the shared context.
    pub context_tokens: usize,
    /// Candidates per request.
    pub candidates: usize,
    /// Tokens per candidate.
    pub candidate_tokens: usize,
    /// Timed repetitions (the median is reported).
    pub repeats: usize,
    /// Whether to time the naive path too (it takes as long as the other two together, several
    /// times over).
    pub naive: bool,
}

/// Median wall times of each path.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The shape measured.
    pub shape: Shape,
    /// Tokens in one request (context + all candidates).
    pub tokens: usize,
    /// Median seconds: shared-prefix scorer.
    pub shared_s: f64,
    /// Median seconds: each candidate with its own context decode (when timed).
    pub naive_s: Option<f64>,
    /// Median seconds: plain single-sequence decode of the same token count.
    pub plain_s: f64,
}

impl Report {
    /// How many times faster the shared path is than the naive one.
    pub fn speedup_over_naive(&self) -> Option<f64> {
        self.naive_s.map(|naive| naive / self.shared_s)
    }

    /// Shared-path tokens/s as a fraction of plain-decode tokens/s.
    pub fn fraction_of_plain(&self) -> f64 {
        self.plain_s / self.shared_s
    }
}

/// How far a run is, in tokens decoded: the warm-up request, then each repeat's three paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Tokens decoded so far.
    pub done: usize,
    /// Tokens the whole run decodes.
    pub total: usize,
    /// Whether this step ended the warm-up (the first, untimed request).
    pub warmed_up: bool,
}

/// Runs the benchmark on `scorer`.
pub fn run(scorer: &mut Scorer<'_>, shape: Shape) -> Result<Report, EngineError> {
    run_with(scorer, shape, |_| {})
}

/// [`run`], telling `progress` after the warm-up and after each path of each repeat.
pub fn run_with(
    scorer: &mut Scorer<'_>,
    shape: Shape,
    mut progress: impl FnMut(Step),
) -> Result<Report, EngineError> {
    let shared = prepare::synthetic(
        scorer.model(),
        shape.context_tokens,
        shape.candidates,
        shape.candidate_tokens,
    )?;
    let alone = shared.one_per_candidate();
    let stream = shared.concatenated();

    let tokens = shared.tokens();
    let naive_tokens: usize = alone.iter().map(|p| p.tokens()).sum();
    let repeats = shape.repeats.max(1);
    let mut step = Step {
        done: 0,
        total: tokens + repeats * (2 * tokens + naive_tokens),
        warmed_up: true,
    };
    let mut advance = |tokens: usize, step: &mut Step| {
        step.done += tokens;
        progress(*step);
        step.warmed_up = false;
    };
    // Warm-up: first touch of the mapped weights and of llama.cpp's compute buffers.
    scorer.score(&shared, Alpha::ONE)?;
    advance(tokens, &mut step);
    let (mut shared_times, mut naive_times, mut plain_times) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..repeats {
        // Interleaved, so a noisy neighbour slows all three paths alike.
        scorer.clear_cache();
        let started = Instant::now();
        scorer.score(&shared, Alpha::ONE)?;
        shared_times.push(started.elapsed());
        advance(tokens, &mut step);

        let mut naive = Duration::ZERO;
        for prepared in alone.iter().filter(|_| shape.naive) {
            scorer.clear_cache();
            let started = Instant::now();
            scorer.score(prepared, Alpha::ONE)?;
            naive += started.elapsed();
        }
        naive_times.push(naive);
        advance(naive_tokens, &mut step);

        let started = Instant::now();
        scorer.decode_plain(&stream, shape.context_tokens.saturating_sub(1))?;
        plain_times.push(started.elapsed());
        advance(tokens, &mut step);
    }
    Ok(Report {
        shape,
        tokens,
        shared_s: median(shared_times),
        naive_s: shape.naive.then(|| median(naive_times)),
        plain_s: median(plain_times),
    })
}

fn median(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times
        .get(times.len() / 2)
        .map_or(f64::NAN, Duration::as_secs_f64)
}

/// The request shapes of the cost sweep (`endorm bench --sweep`): one axis varied at a time around
/// a base shape.
#[derive(Debug, Clone, Serialize)]
pub struct SweepGrid {
    /// The base shape: context tokens, candidates, tokens per candidate.
    pub base: (usize, usize, usize),
    /// Candidates per request.
    pub candidates: Vec<usize>,
    /// Tokens per candidate.
    pub candidate_tokens: Vec<usize>,
    /// Context tokens (a request has at least one).
    pub context_tokens: Vec<usize>,
    /// Fractions of each candidate's tokens that all candidates share, at `shared_shape`.
    pub shared_fractions: Vec<f64>,
    /// Candidates and tokens per candidate for the shared-prefix axis (sharing shows with many).
    pub shared_shape: (usize, usize),
    /// Timed cold requests per point (the median is kept), after one untimed.
    pub repeats: usize,
}

impl Default for SweepGrid {
    /// About 31,000 tokens a repetition: SmolLM2-135M runs it in ~7 minutes on 2 cores (3
    /// repetitions), Qwen2.5-Coder-1.5B in ~35 (1 repetition) (BENCHMARKS.md).
    fn default() -> Self {
        SweepGrid {
            base: (256, 8, 32),
            candidates: vec![1, 2, 4, 8, 16, 32, 64],
            candidate_tokens: vec![8, 32, 128, 512, 1024],
            context_tokens: vec![1, 256, 1024, 4096],
            shared_fractions: vec![0.0, 0.25, 0.5, 0.75, 0.9],
            shared_shape: (16, 64),
            repeats: 3,
        }
    }
}

/// One point of the sweep: a request shape and what scoring it cold took.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct SweepPoint {
    /// The axis this point varies: `candidates`, `candidate_tokens`, `context_tokens` or
    /// `shared_fraction`.
    pub axis: String,
    /// Context tokens.
    pub context_tokens: usize,
    /// Candidates.
    pub candidates: usize,
    /// Tokens per candidate.
    pub candidate_tokens: usize,
    /// Fraction of each candidate's tokens shared by all.
    pub shared_fraction: f64,
    /// Tokens the request holds: the context and every candidate.
    pub tokens: usize,
    /// Tokens decoded: the context and the candidates' prefix tree.
    pub decoded: usize,
    /// Logits rows computed and reduced (the context's last, one per tree node).
    pub rows: usize,
    /// Median seconds of a cold request.
    pub seconds: f64,
    /// Resident memory the point's context added (KV cache, compute and logits buffers), MiB;
    /// `None` where the process's memory cannot be read.
    pub memory_mib: Option<f64>,
}

impl SweepPoint {
    /// The value this point has on its axis.
    pub fn x(&self) -> f64 {
        match self.axis.as_str() {
            "candidates" => self.candidates as f64,
            "candidate_tokens" => self.candidate_tokens as f64,
            "context_tokens" => self.context_tokens as f64,
            _ => self.shared_fraction,
        }
    }
}

/// The shapes of `grid`: (axis, context tokens, candidates, tokens per candidate, shared fraction).
pub fn sweep_shapes(grid: &SweepGrid) -> Vec<(&'static str, usize, usize, usize, f64)> {
    let (context, candidates, length) = grid.base;
    let mut shapes = Vec::new();
    shapes.extend(
        grid.candidates
            .iter()
            .map(|&n| ("candidates", context, n, length, 0.0)),
    );
    shapes.extend(
        (grid.candidate_tokens.iter()).map(|&l| ("candidate_tokens", context, candidates, l, 0.0)),
    );
    shapes.extend(
        (grid.context_tokens.iter()).map(|&c| ("context_tokens", c, candidates, length, 0.0)),
    );
    let (n, l) = grid.shared_shape;
    shapes.extend((grid.shared_fractions.iter()).map(|&f| ("shared_fraction", context, n, l, f)));
    shapes
}

/// Runs the sweep on `model`: each shape on a context of its own (`options`, its window sized to
/// the request), so that the memory it adds is its own. `each` sees every point as it is done.
pub fn sweep(
    model: &crate::engine::Model,
    options: crate::engine::ContextOptions,
    grid: &SweepGrid,
    mut each: impl FnMut(&SweepPoint),
) -> Result<Vec<SweepPoint>, EngineError> {
    let mut points = Vec::new();
    for (axis, context, candidates, length, fraction) in sweep_shapes(grid) {
        let shared = (fraction * length as f64).round() as usize;
        let request = prepare::synthetic_shared(model, context, candidates, length, shared)?;
        let n_ctx = (request.tokens() + 1).next_multiple_of(256) as u32;
        let before = resident_mib();
        let mut scorer = Scorer::new(
            model,
            crate::engine::ContextOptions {
                n_ctx,
                cache_slots: 0,
                ..options
            },
        )?;
        let warm = scorer.score(&request, Alpha::ONE)?;
        let mut times = Vec::new();
        for _ in 0..grid.repeats.max(1) {
            let started = Instant::now();
            scorer.score(&request, Alpha::ONE)?;
            times.push(started.elapsed());
        }
        let memory_mib = resident_mib()
            .zip(before)
            .map(|(after, before)| after - before);
        drop(scorer);
        let point = SweepPoint {
            axis: axis.to_owned(),
            context_tokens: request.context.len(),
            candidates,
            candidate_tokens: length,
            shared_fraction: fraction,
            tokens: request.tokens(),
            decoded: request.context.len() + warm.decoded_tokens,
            rows: 1 + warm.decoded_tokens,
            seconds: median(times),
            memory_mib,
        };
        each(&point);
        points.push(point);
    }
    Ok(points)
}

/// This process's resident memory in MiB (Linux's `/proc/self/status`).
fn resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The least-squares fit `seconds ≈ a·decoded + b·rows + c` over `points`: seconds per decoded
/// token, per logits row, and per request, with R².
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CostModel {
    /// Seconds per decoded token (context or tree node).
    pub per_token: f64,
    /// Seconds per logits row on top of its token's.
    pub per_row: f64,
    /// Seconds per request besides its tokens.
    pub per_request: f64,
    /// Fraction of the variance of the times the fit explains.
    pub r_squared: f64,
}

/// Fits the [`CostModel`] to `points` (`None` with fewer than three).
pub fn fit_cost(points: &[SweepPoint]) -> Option<CostModel> {
    if points.len() < 3 {
        return None;
    }
    // Normal equations of [decoded, rows, 1] · [a, b, c] = seconds.
    let rows: Vec<[f64; 3]> = points
        .iter()
        .map(|p| [p.decoded as f64, p.rows as f64, 1.0])
        .collect();
    let mut m = [[0.0f64; 4]; 3];
    for (x, p) in rows.iter().zip(points) {
        for i in 0..3 {
            for j in 0..3 {
                m[i][j] += x[i] * x[j];
            }
            m[i][3] += x[i] * p.seconds;
        }
    }
    // Gauss-Jordan with partial pivoting.
    for col in 0..3 {
        let pivot = (col..3).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
        m.swap(col, pivot);
        if m[col][col].abs() < 1e-12 {
            return None;
        }
        let pivot_row = m[col];
        for (r, row) in m.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / pivot_row[col];
                for (x, p) in row.iter_mut().zip(pivot_row).skip(col) {
                    *x -= f * p;
                }
            }
        }
    }
    let [a, b, c] = [0, 1, 2].map(|i| m[i][3] / m[i][i]);
    let mean = points.iter().map(|p| p.seconds).sum::<f64>() / points.len() as f64;
    let (mut residual, mut total) = (0.0, 0.0);
    for (x, p) in rows.iter().zip(points) {
        residual += (p.seconds - (a * x[0] + b * x[1] + c)).powi(2);
        total += (p.seconds - mean).powi(2);
    }
    Some(CostModel {
        per_token: a,
        per_row: b,
        per_request: c,
        r_squared: 1.0 - residual / total.max(f64::MIN_POSITIVE),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(decoded: usize, rows: usize, seconds: f64) -> SweepPoint {
        SweepPoint {
            axis: "candidates".into(),
            context_tokens: 0,
            candidates: 0,
            candidate_tokens: 0,
            shared_fraction: 0.0,
            tokens: decoded,
            decoded,
            rows,
            seconds,
            memory_mib: None,
        }
    }

    #[test]
    fn the_cost_fit_recovers_a_linear_model() {
        // 2 ms a token, 0.5 ms a row, 30 ms a request.
        let shapes = [
            (100, 10),
            (200, 150),
            (400, 20),
            (800, 700),
            (1600, 90),
            (50, 49),
        ];
        let points: Vec<SweepPoint> = shapes
            .iter()
            .map(|&(d, r)| point(d, r, 0.002 * d as f64 + 0.0005 * r as f64 + 0.03))
            .collect();
        let fit = fit_cost(&points).unwrap();
        assert!((fit.per_token - 0.002).abs() < 1e-9, "{fit:?}");
        assert!((fit.per_row - 0.0005).abs() < 1e-9, "{fit:?}");
        assert!((fit.per_request - 0.03).abs() < 1e-7, "{fit:?}");
        assert!(fit.r_squared > 0.999_999);
        assert_eq!(fit_cost(&points[..2]), None);
    }

    #[test]
    fn the_sweep_varies_one_axis_at_a_time_around_its_base() {
        let grid = SweepGrid::default();
        let shapes = sweep_shapes(&grid);
        assert_eq!(
            shapes.len(),
            grid.candidates.len()
                + grid.candidate_tokens.len()
                + grid.context_tokens.len()
                + grid.shared_fractions.len()
        );
        let (c, n, l) = grid.base;
        for (axis, context, candidates, length, fraction) in shapes {
            let varied = [context != c, candidates != n, length != l, fraction != 0.0];
            let allowed = match axis {
                "candidates" => [false, true, false, false],
                "candidate_tokens" => [false, false, true, false],
                "context_tokens" => [true, false, false, false],
                _ => [false, true, true, true],
            };
            for (v, a) in varied.iter().zip(allowed) {
                assert!(
                    !v || a,
                    "{axis}: {context} {candidates} {length} {fraction}"
                );
            }
        }
    }
}
