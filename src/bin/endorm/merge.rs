//! `endorm merge`: the outputs of `endorm score --shard` runs into one output in input order,
//! refused unless they hold exactly one line for every input id.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use endorm::offline::merge::{self, MergeError};

#[derive(Args)]
#[command(
    after_help = "Example:\n  endorm merge --input requests.jsonl --output scores.jsonl part0.jsonl part1.jsonl"
)]
pub struct MergeArgs {
    /// The input JSONL that was scored: it gives the ids and their order.
    #[arg(long, short)]
    pub input: PathBuf,
    /// The merged output (written whole or not at all).
    #[arg(long, short)]
    pub output: PathBuf,
    /// Replace an existing output.
    #[arg(long)]
    pub force: bool,
    /// The parts (e.g. every `--shard` output).
    #[arg(required = true, value_name = "PART")]
    pub parts: Vec<PathBuf>,
}

/// Merges; exit status 1 with the report, and nothing written, when the parts are not complete.
pub fn run(args: MergeArgs) -> Result<ExitCode> {
    match merge::merge(&args.input, &args.parts, &args.output, args.force) {
        Ok(report) => {
            eprintln!(
                "{}: {} lines in input order ({} of them error lines)",
                args.output.display(),
                report.present,
                report.errors
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(error @ MergeError::Incomplete(_)) => {
            eprintln!("{error}");
            Ok(ExitCode::FAILURE)
        }
        Err(error) => Err(error.into()),
    }
}
