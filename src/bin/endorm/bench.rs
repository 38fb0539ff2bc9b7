//! `endorm bench`: the shared-prefix scorer against a naive scorer and a plain llama.cpp decode;
//! with `--sweep DIR`, how a request's cost grows with its shape, drawn as SVG.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

use endorm::bench::{self, CostModel, SweepGrid, SweepPoint};
use endorm::engine::{ContextOptions, Model, Scorer};
use endorm::eval::plot::{self, Axis, Series};

use crate::model::ModelArgs;

#[derive(Args)]
#[command(
    after_help = "Example:\n  endorm bench --model qwen2.5-coder-0.5b --context-tokens 256 --repeats 3"
)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Tokens of shared context.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u16).range(1..))]
    pub context_tokens: u16,
    /// Candidates per request.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=255))]
    pub candidates: u16,
    /// Tokens per candidate.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub candidate_tokens: u16,
    /// Timed repetitions; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Time the naive path (each candidate with its own context) too.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub naive: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Instead, sweep the request's shape (candidates 1–64, candidate tokens 8–1024, context
    /// tokens 1–4096, shared-prefix fraction 0–0.9) and write DIR/sweep-MODEL.json and, from
    /// every sweep-*.json there, DIR/time-AXIS.svg and DIR/memory-AXIS.svg.
    #[arg(long, value_name = "DIR")]
    pub sweep: Option<PathBuf>,
    /// Timed cold requests per sweep point (the median is kept).
    #[arg(long, default_value_t = 3)]
    pub sweep_repeats: usize,
}

/// Runs `endorm bench`.
pub fn run(args: BenchArgs) -> Result<ExitCode> {
    let (model, mut context) = args.model.load()?;
    if let Some(dir) = &args.sweep {
        return sweep(&model, context, dir, args.sweep_repeats);
    }
    let shape = bench::Shape {
        context_tokens: args.context_tokens.into(),
        candidates: args.candidates.into(),
        candidate_tokens: args.candidate_tokens.into(),
        repeats: args.repeats,
        naive: args.naive,
    };
    let needed = shape.context_tokens + shape.candidates * shape.candidate_tokens;
    context.n_ctx = context.n_ctx.max(needed as u32);
    let mut scorer = Scorer::new(&model, context)?;
    eprintln!(
        "bench: {} tokens a request, {} repeats of the three paths after one warm-up request \
         (--repeats, --context-tokens and --candidates make it shorter)",
        needed, shape.repeats
    );
    let bar = endorm::progress::bar(!args.json, 0, "tokens");
    let started = std::time::Instant::now();
    let report = bench::run_with(&mut scorer, shape, |step| {
        bar.set_length(step.total as u64);
        bar.set_position(step.done as u64);
        if step.warmed_up {
            let secs = started.elapsed().as_secs_f64();
            let left = secs * (step.total - step.done) as f64 / step.done.max(1) as f64;
            bar.suspend(|| {
                eprintln!("bench: the warm-up took {secs:.1} s; about {left:.0} s to go")
            });
        }
    })?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rate = |secs: f64| report.tokens as f64 / secs;
    println!(
        "{} context tokens + {} candidates × {} tokens = {} tokens, {} threads, n_batch {}, median of {}",
        shape.context_tokens, shape.candidates, shape.candidate_tokens, report.tokens, context.n_threads, context.n_batch, shape.repeats
    );
    println!("{:<34} {:>9} {:>10}", "path", "ms", "tokens/s");
    for (name, secs) in [
        ("shared prefix (endorm)", Some(report.shared_s)),
        ("naive: own context per candidate", report.naive_s),
        ("plain decode (llama.cpp limit)", Some(report.plain_s)),
    ] {
        if let Some(secs) = secs {
            println!("{name:<34} {:>9.1} {:>10.0}", secs * 1e3, rate(secs));
        }
    }
    if let Some(speedup) = report.speedup_over_naive() {
        println!("shared vs naive: {speedup:.2}× faster");
    }
    println!(
        "shared vs plain decode: {:.1}% of its tokens/s",
        report.fraction_of_plain() * 100.0
    );
    Ok(ExitCode::SUCCESS)
}

/// One model's sweep, as written to DIR/sweep-MODEL.json.
#[derive(Serialize, Deserialize)]
struct SweepRun {
    model: String,
    threads: u32,
    n_batch: u32,
    points: Vec<SweepPoint>,
    cost: Option<CostFit>,
}

/// [`CostModel`] in the file (deserialisable).
#[derive(Serialize, Deserialize)]
struct CostFit {
    per_token_ms: f64,
    per_row_ms: f64,
    per_request_ms: f64,
    r_squared: f64,
}

impl From<CostModel> for CostFit {
    fn from(c: CostModel) -> Self {
        CostFit {
            per_token_ms: c.per_token * 1e3,
            per_row_ms: c.per_row * 1e3,
            per_request_ms: c.per_request * 1e3,
            r_squared: c.r_squared,
        }
    }
}

fn sweep(model: &Model, context: ContextOptions, dir: &Path, repeats: usize) -> Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let name = model
        .meta()
        .path
        .file_stem()
        .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    let grid = SweepGrid {
        repeats,
        ..SweepGrid::default()
    };
    eprintln!(
        "{name}: {} shapes, {} threads, n_batch {}, median of {repeats}",
        bench::sweep_shapes(&grid).len(),
        context.n_threads,
        context.n_batch
    );
    println!("| axis | context | candidates | tokens each | shared | decoded | rows | seconds | memory MiB |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let points = bench::sweep(model, context, &grid, |p| {
        println!(
            "| {} | {} | {} | {} | {:.2} | {} | {} | {:.3} | {} |",
            p.axis,
            p.context_tokens,
            p.candidates,
            p.candidate_tokens,
            p.shared_fraction,
            p.decoded,
            p.rows,
            p.seconds,
            p.memory_mib.map_or("—".into(), |m| format!("{m:.0}"))
        );
    })?;
    let cost = bench::fit_cost(&points);
    if let Some(c) = cost {
        println!(
            "\ncost ≈ {:.3} ms × decoded tokens + {:.3} ms × logits rows + {:.1} ms (R² {:.3})",
            c.per_token * 1e3,
            c.per_row * 1e3,
            c.per_request * 1e3,
            c.r_squared
        );
    }
    let run = SweepRun {
        model: name.clone(),
        threads: context.n_threads,
        n_batch: context.n_batch,
        points,
        cost: cost.map(CostFit::from),
    };
    let path = dir.join(format!("sweep-{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&run)? + "\n")
        .with_context(|| path.display().to_string())?;
    for figure in draw(dir)? {
        eprintln!("wrote {}", figure.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Draws the figures of every sweep-*.json in `dir`, one line per model.
fn draw(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut runs: Vec<SweepRun> = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("sweep-") && name.ends_with(".json")
        })
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        runs.push(serde_json::from_str(&text).with_context(|| file.display().to_string())?);
    }
    let axes = [
        ("candidates", "candidates per request", true),
        ("candidate_tokens", "tokens per candidate", true),
        ("context_tokens", "context tokens", true),
        (
            "shared_fraction",
            "fraction of each candidate shared by all (16 × 64 tokens)",
            false,
        ),
    ];
    let mut written = Vec::new();
    for (axis, title, log) in axes {
        let series = |value: fn(&SweepPoint) -> Option<f64>| -> Vec<Series> {
            runs.iter()
                .map(|run| Series {
                    name: run.model.clone(),
                    points: (run.points.iter())
                        .filter(|p| p.axis == axis)
                        .filter_map(|p| Some((p.x(), value(p)?)))
                        .collect(),
                })
                .filter(|s| !s.points.is_empty())
                .collect()
        };
        let x = Axis {
            title: title.into(),
            log,
        };
        let time = dir.join(format!("time-{axis}.svg"));
        plot::write_lines(
            &time,
            &format!("cold request time by {title}"),
            &x,
            &Axis {
                title: "seconds (median)".into(),
                log: true,
            },
            &series(|p| Some(p.seconds)),
        )?;
        written.push(time);
        let memory = dir.join(format!("memory-{axis}.svg"));
        plot::write_lines(
            &memory,
            &format!("memory of the request's context by {title}"),
            &x,
            &Axis {
                title: "resident MiB added".into(),
                log: false,
            },
            &series(|p| p.memory_mib),
        )?;
        written.push(memory);
    }
    Ok(written)
}
