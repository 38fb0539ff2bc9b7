//! `endorm verify`: do the outputs of `endorm score` (its `--shard` parts) hold exactly one line for
//! every id of the input, and nothing else?

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use endorm::offline::merge;

#[derive(Args)]
#[command(
    after_help = "Example:\n  endorm verify --input requests.jsonl part0.jsonl part1.jsonl part2.jsonl part3.jsonl"
)]
pub struct VerifyArgs {
    /// The input JSONL that was scored.
    #[arg(long, short)]
    pub input: PathBuf,
    /// The outputs (e.g. every `--shard` part).
    #[arg(required = true, value_name = "OUTPUT")]
    pub outputs: Vec<PathBuf>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Prints the report; exit status 0 when complete, 1 when not (missing, duplicate or unknown ids,
/// lines that do not parse). Error lines (`"error"`) count as present: they are reported, and
/// `jq -c 'select(.error)'` lists them.
pub fn run(args: VerifyArgs) -> Result<ExitCode> {
    let report = merge::verify(&args.input, &args.outputs)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(if report.is_complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
