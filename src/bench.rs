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
    /// Median seconds: each candidate with its own context decode.
    pub naive_s: f64,
    /// Median seconds: plain single-sequence decode of the same token count.
    pub plain_s: f64,
}

impl Report {
    /// How many times faster the shared path is than the naive one.
    pub fn speedup_over_naive(&self) -> f64 {
        self.naive_s / self.shared_s
    }

    /// Shared-path tokens/s as a fraction of plain-decode tokens/s.
    pub fn fraction_of_plain(&self) -> f64 {
        self.plain_s / self.shared_s
    }
}

/// Runs the benchmark on `scorer`.
pub fn run(scorer: &mut Scorer<'_>, shape: Shape) -> Result<Report, EngineError> {
    let shared = prepare::synthetic(
        scorer.model(),
        shape.context_tokens,
        shape.candidates,
        shape.candidate_tokens,
    )?;
    let alone = shared.one_per_candidate();
    let stream = shared.concatenated();

    // Warm-up: first touch of the mapped weights and of llama.cpp's compute buffers.
    scorer.score(&shared, Alpha::ONE)?;
    let (mut shared_times, mut naive_times, mut plain_times) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..shape.repeats.max(1) {
        // Interleaved, so a noisy neighbour slows all three paths alike.
        scorer.clear_cache();
        let started = Instant::now();
        scorer.score(&shared, Alpha::ONE)?;
        shared_times.push(started.elapsed());

        let mut naive = Duration::ZERO;
        for prepared in &alone {
            scorer.clear_cache();
            let started = Instant::now();
            scorer.score(prepared, Alpha::ONE)?;
            naive += started.elapsed();
        }
        naive_times.push(naive);

        let started = Instant::now();
        scorer.decode_plain(&stream, shape.context_tokens.saturating_sub(1))?;
        plain_times.push(started.elapsed());
    }
    Ok(Report {
        shape,
        tokens: shared.tokens(),
        shared_s: median(shared_times),
        naive_s: median(naive_times),
        plain_s: median(plain_times),
    })
}

fn median(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times
        .get(times.len() / 2)
        .map_or(f64::NAN, Duration::as_secs_f64)
}
