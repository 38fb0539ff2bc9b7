//! `endorm eval`: how well the reward ranks on labelled files, beside the paper's baselines.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Args;

use endorm::engine::{Model, Scorer};
use endorm::eval::{self, methods::Method};
use endorm::paths;

use crate::model::ModelArgs;

#[derive(Args)]
#[command(
    after_help = "Example:\n  endorm eval --data prefs.jsonl --method endo,logprob,length --report report.json"
)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSONL of preference items (id, prompt, chosen, rejected) or ranking items (task_id, prompt,
    /// completions, passed[, format]); repeat it, or name a directory (its *.jsonl files), to
    /// evaluate several domains in one run and print their map.
    #[arg(long, short, required = true)]
    pub data: Vec<PathBuf>,
    /// Methods, comma-separated [default: all but the contrasts, plus the reference ones with
    /// --reference-model]: endo, endo_mean, logprob, logprob_mean, length, -length, consensus,
    /// endo+consensus, endo_mean+consensus, logprob+consensus, logprob_mean+consensus,
    /// judge-verifier, judge-pairwise; the contrasts endo-neutral, endo_mean-neutral,
    /// logprob-neutral, logprob_mean-neutral, reviewer, endo+reviewer, endo_mean+reviewer; with
    /// --reference-model, endo-reference, endo_mean-reference, logprob-reference,
    /// logprob_mean-reference.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub method: Vec<eval::methods::Method>,
    /// GGUF reference model of the `-reference` methods ("expert minus amateur": each aggregate
    /// minus the same aggregate of the same tokens under it, e.g. a 1.5B model against its 0.5B
    /// sibling). Loaded with the same settings; it must tokenize like the model.
    #[arg(long, value_name = "MODEL")]
    pub reference_model: Option<PathBuf>,
    /// Principle (system message) for the reward on chat-format items.
    #[arg(long)]
    pub principle: Option<String>,
    /// A Jinja chat template file that replaces the model's (for a base model without one, to
    /// score chat-format items: evaldata/templates/plain.jinja).
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<PathBuf>,
    /// Only the first N items.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write the JSON report here; per-item scores are cached beside it (OUT.items.jsonl) and a
    /// rerun resumes from them. With several data files, a directory: DOMAIN.json for each file
    /// and map.json.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Delete the cached per-item scores first and start over.
    #[arg(long, requires = "report")]
    pub fresh: bool,
    /// Also draw the report as SVG figures in this directory: estimates.svg (each method's
    /// number with its 95% interval), roc.svg (ranking files), differences.svg (preference files).
    /// With several data files, DIR/DOMAIN/ for each and DIR/map/estimates.svg for the map.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs `endorm eval`.
pub fn run(args: EvalArgs) -> Result<ExitCode> {
    let data = data_files(&args.data)?;
    let path = args.model.path()?;
    let settings = args.model.settings.settings();
    let chat_template = match &args.chat_template {
        Some(file) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the chat template {}", file.display()))?,
        ),
        None => None,
    };
    let model = Model::load(&path, &settings.model_options(chat_template))?;
    let context = settings.context_options(model.meta().n_ctx_train);
    let mut scorer = Scorer::new(&model, context)?;
    let reference = match &args.reference_model {
        Some(path) => Some(args.model.settings.load(path)?),
        None => None,
    };
    let mut reference_scorer = match &reference {
        Some((model, context)) => Some(Scorer::new(model, *context)?),
        None => None,
    };
    let several = data.len() > 1;
    if let (true, Some(dir)) = (several, &args.report) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the report directory {}", dir.display()))?;
    }
    let methods = match (args.method.is_empty(), &reference) {
        (false, _) => args.method.clone(),
        (true, None) => Method::DEFAULT.to_vec(),
        // A reference model given is a reference model to use.
        (true, Some(_)) => [Method::DEFAULT, Method::REFERENCE].concat(),
    };
    let mut reports = Vec::new();
    for file in &data {
        let domain = eval::map::domain_name(&file.display().to_string());
        let report_path = match (&args.report, several) {
            (Some(dir), true) => Some(dir.join(format!("{domain}.json"))),
            (report, _) => report.clone(),
        };
        let cache = report_path.as_deref().map(eval::cache_path);
        if let (true, Some(cache)) = (args.fresh, &cache) {
            match std::fs::remove_file(cache) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("cannot delete {}", cache.display()))
                }
                _ => {}
            }
        }
        let config = eval::EvalConfig {
            data: file.clone(),
            methods: methods.clone(),
            principle: args.principle.clone(),
            limit: args.limit,
            cache,
            model_id: paths::model_id(&model.meta().path),
            progress: !args.quiet,
            plot: match (&args.plot, several) {
                (Some(dir), true) => Some(dir.join(&domain)),
                (plot, _) => plot.clone(),
            },
        };
        let reference = match (&mut reference_scorer, &args.reference_model) {
            (Some(scorer), Some(path)) => Some(eval::Reference {
                scorer,
                model_id: paths::model_id(path),
            }),
            _ => None,
        };
        let report = eval::run(&mut scorer, reference, &config)?;
        println!("{}\n", report.table());
        for figure in &report.figures {
            eprintln!("figure: {figure}");
        }
        if let Some(path) = &report_path {
            write_json(path, &report)?;
        }
        reports.push(report);
    }
    if several {
        let map = eval::map::Map::of(&reports);
        println!("{}", map.table());
        if let Some(dir) = &args.plot {
            for figure in eval::plot::write(&dir.join("map"), &map.figures())? {
                eprintln!("figure: {}", figure.display());
            }
        }
        if let Some(dir) = &args.report {
            write_json(&dir.join("map.json"), &map)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The data files: each file as given, each directory's `*.jsonl` files in name order.
fn data_files(given: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in given {
        if path.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot read the directory {}", path.display()))?
                .filter_map(|entry| Some(entry.ok()?.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
                .collect();
            if inside.is_empty() {
                anyhow::bail!("{} holds no .jsonl file", path.display());
            }
            inside.sort();
            files.extend(inside);
        } else {
            files.push(path.clone());
        }
    }
    let mut domains = std::collections::HashSet::new();
    for file in &files {
        let domain = eval::map::domain_name(&file.display().to_string());
        if !domains.insert(domain.clone()) {
            anyhow::bail!("two data files are named {domain}: their reports would collide");
        }
    }
    Ok(files)
}

fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> Result<()> {
    let json = serde_json::to_string_pretty(value)?;
    std::fs::write(path, json + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("report: {}", path.display());
    Ok(())
}
