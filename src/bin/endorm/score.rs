//! `endorm score`: a JSONL file of `/v1/score` requests into a JSONL file of responses.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use endorm::engine::Scorer;
use endorm::offline::{self, Existing, OfflineError, Output, Shard};
use endorm::paths;

use crate::model::ModelArgs;

#[derive(Args)]
#[command(
    after_help = "Examples:\n  endorm score --input requests.jsonl --output scores.jsonl\n  cat requests.jsonl | endorm score -i - -o - | jq .order"
)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Input JSONL: one /v1/score request body per line, with an optional "id".
    #[arg(long, short)]
    pub input: PathBuf,
    /// Output JSONL: one /v1/score response per line, with the input's "id".
    #[arg(long, short)]
    pub output: PathBuf,
    /// Continue an earlier run: skip the ids already in the output.
    #[arg(long, conflicts_with = "force")]
    pub resume: bool,
    /// Overwrite an existing output.
    #[arg(long)]
    pub force: bool,
    /// Score only the lines i, i+N, i+2N, … (0-based), e.g. `--shard 0/4`.
    #[arg(long)]
    pub shard: Option<Shard>,
    /// Principle (system message) for chat requests that name none.
    #[arg(long)]
    pub principle: Option<String>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs `endorm score`. Exits with [`offline::EXIT_LOCKED`] (75) when another run holds the
/// output, before loading the model: the second of two overlapping runs of one shard stops there.
pub fn run(args: ScoreArgs) -> Result<ExitCode> {
    let existing = match (args.resume, args.force) {
        (true, _) => Existing::Resume,
        (_, true) => Existing::Overwrite,
        _ => Existing::Refuse,
    };
    // The input is checked first, so that a wrong path creates no output file.
    if args.input.as_os_str() != offline::STDIO {
        std::fs::File::open(&args.input)
            .map_err(|e| anyhow::anyhow!("{}: {e}", args.input.display()))?;
    }
    let output = match Output::open(&args.output, existing) {
        Err(error @ OfflineError::Locked { .. }) => {
            eprintln!("error: {error}");
            return Ok(ExitCode::from(offline::EXIT_LOCKED));
        }
        opened => opened?,
    };
    let loaded = args.model.load();
    let created = std::fs::metadata(&args.output).is_ok_and(|m| m.is_file());
    if loaded.is_err() && existing == Existing::Refuse && created {
        // The file this run created is empty: a model that does not load leaves nothing behind.
        let _ = std::fs::remove_file(&args.output);
    }
    let (model, context) = loaded?;
    let mut scorer = Scorer::new(&model, context)?;
    let run = offline::Run {
        input: args.input,
        output: args.output,
        existing,
        shard: args.shard,
        model_id: paths::model_id(&model.meta().path),
        principle: args.principle,
        progress: !args.quiet,
    };
    let summary = offline::run(&mut scorer, &run, output)?;
    eprintln!(
        "{} scored, {} failed, {} skipped (already in {}); {} tokens",
        summary.scored,
        summary.failed,
        summary.skipped,
        run.output.display(),
        summary.tokens
    );
    Ok(if summary.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
