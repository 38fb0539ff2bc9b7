//! The `endorm` command line: parse, call into the library, print.

mod serve_cli;

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};

use endorm::api::{Contrast, Format, ScoreRequest};
use endorm::engine::{ContextOptions, Model, ModelOptions, Scorer, WorkerOptions};
use endorm::eval::methods::Method;
use endorm::offline::{self, Existing, Shard};
use endorm::reward::Aggregate;
use endorm::{bench, eval, paths};

/// endorm — a local reward model from any GGUF language model's own logits.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log filter, e.g. `info` or `endorm=debug` (RUST_LOG works too) [default: warn; for serve:
    /// warn,endorm=info, one line per request].
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Score a JSONL file of /v1/score requests into a JSONL file of responses.
    Score(ScoreArgs),
    /// Rank candidate answers to a prompt and print a table.
    Rerank(RerankArgs),
    /// Time the shared-prefix scorer against a naive scorer and a plain llama.cpp decode.
    Bench(BenchArgs),
    /// Run the daemon: HTTP over a Unix socket (API.md) until SIGTERM/SIGINT.
    Serve(serve_cli::ServeArgs),
    /// Where the daemon's config is, what it holds, whether it is valid.
    #[command(subcommand)]
    Config(serve_cli::ConfigCommand),
    /// Measure how well the reward ranks on a labelled file, beside the paper's baselines.
    Eval(EvalArgs),
    /// Lend this machine to another endorm: ggml's RPC server, which holds and runs the layers an
    /// `endorm serve --rpc` places here. No authentication: docs/SCALE.md.
    RpcWorker(RpcWorkerArgs),
}

#[derive(Args)]
struct ModelArgs {
    /// GGUF model file [default: SmolLM2-135M-Instruct in the model directory]
    #[arg(long, short)]
    model: Option<PathBuf>,
    #[command(flatten)]
    settings: serve_cli::SettingsArgs,
}

#[derive(Args)]
struct ScoreArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Input JSONL: one /v1/score request body per line, with an optional "id".
    #[arg(long, short)]
    input: PathBuf,
    /// Output JSONL: one /v1/score response per line, with the input's "id".
    #[arg(long, short)]
    output: PathBuf,
    /// Continue an earlier run: skip the ids already in the output.
    #[arg(long, conflicts_with = "force")]
    resume: bool,
    /// Overwrite an existing output.
    #[arg(long)]
    force: bool,
    /// Score only the lines i, i+N, i+2N, … (0-based), e.g. `--shard 0/4`.
    #[arg(long)]
    shard: Option<Shard>,
    /// Principle (system message) for chat requests that name none.
    #[arg(long)]
    principle: Option<String>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
struct RerankArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt (chat: the user's message; --raw: the text the candidates continue).
    #[arg(long, short)]
    prompt: String,
    /// The candidate answers.
    #[arg(required = true)]
    candidates: Vec<String>,
    /// Raw text instead of the chat template.
    #[arg(long)]
    raw: bool,
    /// Principle (system message) that says what a good answer is.
    #[arg(long)]
    principle: Option<String>,
    /// Score that ranks: endo, endo_mean, logprob or logprob_mean.
    #[arg(long, default_value = "endo")]
    aggregate: Aggregate,
    /// Combine the score with the candidates' agreement with each other, at this weight
    /// (`consensus` in API.md: for many sampled answers).
    #[arg(long, value_name = "W")]
    consensus: Option<f64>,
    /// Subtract the same score after a neutral context (`contrast: "neutral"` in API.md).
    #[arg(long)]
    neutral: bool,
    /// Add the reviewer term, log p(prompt | candidate) (`reviewer` in API.md).
    #[arg(long)]
    reviewer: bool,
    /// Also print each token's reward.
    #[arg(long)]
    tokens: bool,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Tokens of shared context.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u16).range(1..))]
    context_tokens: u16,
    /// Candidates per request.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=255))]
    candidates: u16,
    /// Tokens per candidate.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    candidate_tokens: u16,
    /// Timed repetitions; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RpcWorkerArgs {
    /// IPv4 address and port to listen on. Anything but loopback lets every host that can reach
    /// it use this machine, unauthenticated.
    #[arg(long, default_value = "127.0.0.1:50052")]
    listen: SocketAddrV4,
    /// CPU threads [default: one per core]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    threads: Option<u32>,
    /// Keep the large tensors clients send in this directory, so that loading the same model again
    /// sends only their hashes.
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// JSONL of preference items (id, prompt, chosen, rejected) or ranking items (task_id, prompt,
    /// completions, passed).
    #[arg(long, short)]
    data: PathBuf,
    /// Methods, comma-separated [default: all but the contrasts, plus the reference ones with
    /// --reference-model]: endo, endo_mean, logprob, logprob_mean, length, -length, consensus,
    /// endo+consensus, endo_mean+consensus, logprob+consensus, logprob_mean+consensus,
    /// judge-verifier, judge-pairwise; the contrasts endo-neutral, endo_mean-neutral,
    /// logprob-neutral, logprob_mean-neutral, reviewer, endo+reviewer, endo_mean+reviewer; with
    /// --reference-model, endo-reference, endo_mean-reference, logprob-reference,
    /// logprob_mean-reference.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    method: Vec<eval::methods::Method>,
    /// GGUF reference model of the `-reference` methods ("expert minus amateur": each aggregate
    /// minus the same aggregate of the same tokens under it, e.g. a 1.5B model against its 0.5B
    /// sibling). Loaded with the same settings; it must tokenize like the model.
    #[arg(long, value_name = "MODEL")]
    reference_model: Option<PathBuf>,
    /// Principle (system message) for the reward on preference items.
    #[arg(long)]
    principle: Option<String>,
    /// Only the first N items.
    #[arg(long)]
    limit: Option<usize>,
    /// Write the JSON report here; per-item scores are cached beside it (OUT.items.jsonl) and a
    /// rerun resumes from them.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Delete the cached per-item scores first and start over.
    #[arg(long, requires = "report")]
    fresh: bool,
    /// Also draw the report as SVG figures in this directory: estimates.svg (each method's
    /// number with its 95% interval), roc.svg (ranking files), differences.svg (preference files).
    #[arg(long, value_name = "DIR")]
    plot: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> ExitCode {
    passive_openmp();
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve(_) => "warn,endorm=info",
        _ => "warn",
    };
    init_logging(cli.log_level.as_deref().unwrap_or(default_level));
    match run(cli.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// llama.cpp's CPU threads are OpenMP threads, and libgomp's default makes a thread that waits at
/// one of a decode's many barriers spin for a while. When the cores are shared with other work
/// (an editor, a build, a training job, another endorm) the spinning threads take the time the
/// thread they wait for needs: one code-ranking item cost 3.7× the CPU time and 3.1× the wall time
/// of the same item with `OMP_WAIT_POLICY=PASSIVE` on a 2-core machine at load 6 (BENCHMARKS.md,
/// "OpenMP threads that wait"). libgomp reads the variable when it is loaded, before `main`, so
/// setting it takes a re-exec of this same binary (same pid, arguments and open files). A policy the
/// user set is kept.
fn passive_openmp() {
    const POLICY: &str = "OMP_WAIT_POLICY";
    #[cfg(unix)]
    if std::env::var_os(POLICY).is_none() {
        use std::os::unix::process::CommandExt as _;
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let mut args = std::env::args_os();
        let mut command = std::process::Command::new(exe);
        if let Some(name) = args.next() {
            command.arg0(name);
        }
        // `exec` returns only when it failed: then run on under libgomp's default.
        let error = command.args(args).env(POLICY, "PASSIVE").exec();
        eprintln!("warning: could not restart with {POLICY}=PASSIVE ({error}); OpenMP threads will spin while they wait");
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colours only on a terminal: journald and log files get plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Score(args) => score(args),
        Command::Rerank(args) => rerank(args),
        Command::Bench(args) => run_bench(args),
        Command::Serve(args) => serve_cli::serve(args),
        Command::Config(command) => serve_cli::config(command),
        Command::Eval(args) => run_eval(args),
        Command::RpcWorker(args) => rpc_worker(args),
    }
}

/// The model file: `--model`, else the default model in the model directory.
fn model_path(model: &Option<PathBuf>) -> Result<PathBuf> {
    if let Some(path) = model {
        return Ok(path.clone());
    }
    let path = paths::default_model().context("no home directory to find the default model in")?;
    if !path.is_file() {
        bail!(
            "no model given and the default model is not installed at {}: run scripts/fetch-model, \
             or pass --model PATH",
            path.display()
        );
    }
    Ok(path)
}

fn load(args: &ModelArgs) -> Result<(Model, ContextOptions)> {
    load_path(&model_path(&args.model)?, &args.settings)
}

/// The model at `path` with the command's settings.
fn load_path(
    path: &std::path::Path,
    settings: &serve_cli::SettingsArgs,
) -> Result<(Model, ContextOptions)> {
    let settings = settings.settings().worker(path, None, 0);
    let options = ModelOptions {
        n_gpu_layers: settings.n_gpu_layers,
        rpc: settings.rpc.clone(),
        chat_template: None,
        use_mmap: false,
    };
    let model = Model::load(path, &options)?;
    let context = settings.context_options(&model);
    Ok((model, context))
}

fn score(args: ScoreArgs) -> Result<ExitCode> {
    let (model, context) = load(&args.model)?;
    let mut scorer = Scorer::new(&model, context)?;
    let job = offline::Job {
        input: args.input,
        output: args.output,
        existing: match (args.resume, args.force) {
            (true, _) => Existing::Resume,
            (_, true) => Existing::Overwrite,
            _ => Existing::Refuse,
        },
        shard: args.shard,
        model_id: paths::model_id(&model.meta().path),
        principle: args.principle,
        progress: !args.quiet,
    };
    let summary = offline::run(&mut scorer, &job)?;
    eprintln!(
        "{} scored, {} failed, {} skipped (already in {}); {} tokens",
        summary.scored,
        summary.failed,
        summary.skipped,
        job.output.display(),
        summary.tokens
    );
    Ok(if summary.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn rerank(args: RerankArgs) -> Result<ExitCode> {
    let (model, context) = load(&args.model)?;
    let mut scorer = Scorer::new(&model, context)?;
    let request = ScoreRequest {
        format: Some(if args.raw { Format::Raw } else { Format::Chat }),
        prompt: Some(args.prompt),
        principle: args.principle,
        candidates: args.candidates,
        aggregate: args.aggregate,
        return_tokens: args.tokens,
        consensus: args.consensus,
        contrast: args.neutral.then_some(Contrast::Neutral),
        reviewer: args.reviewer,
        ..ScoreRequest::default()
    };
    let id = paths::model_id(&model.meta().path);
    let response = scorer.score_request(&id, &request, None)?;
    // The ranking column is the plain aggregate unless a term changes it; then it says so.
    let mut score_name = args.aggregate.name().to_owned();
    if args.neutral {
        score_name.push_str("-neutral");
    }
    if args.reviewer {
        score_name.push_str("+reviewer");
    }
    if args.consensus.is_some() {
        score_name.push_str("+consensus");
    }
    let width = score_name.len().max(10);
    println!(
        "{:>4}  {score_name:>width$}  {:>10}  {:>10}  {:>6}  candidate",
        "rank", "endo", "logprob", "tokens"
    );
    for &index in &response.order {
        let r = &response.results[index];
        println!(
            "{:>4}  {:>width$.3}  {:>10.3}  {:>10.3}  {:>6}  {}",
            r.rank,
            r.score,
            r.endo,
            r.logprob,
            r.n_tokens,
            one_line(&request.candidates[index], 60)
        );
        for token in r.tokens.iter().flatten() {
            println!(
                "{:>tokens$.3}  {:?}",
                token.reward,
                token.text,
                tokens = width + 38
            );
        }
    }
    println!("scores compare only within this table ({score_name} on {id})");
    Ok(ExitCode::SUCCESS)
}

fn one_line(text: &str, width: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match flat.char_indices().nth(width) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
}

fn run_bench(args: BenchArgs) -> Result<ExitCode> {
    let (model, mut context) = load(&args.model)?;
    let shape = bench::Shape {
        context_tokens: args.context_tokens.into(),
        candidates: args.candidates.into(),
        candidate_tokens: args.candidate_tokens.into(),
        repeats: args.repeats,
    };
    let needed = shape.context_tokens + shape.candidates * shape.candidate_tokens;
    context.n_ctx = context.n_ctx.max(needed as u32);
    let mut scorer = Scorer::new(&model, context)?;
    let report = bench::run(&mut scorer, shape)?;
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
        ("shared prefix (endorm)", report.shared_s),
        ("naive: own context per candidate", report.naive_s),
        ("plain decode (llama.cpp limit)", report.plain_s),
    ] {
        println!("{name:<34} {:>9.1} {:>10.0}", secs * 1e3, rate(secs));
    }
    println!(
        "shared vs naive: {:.2}× faster",
        report.speedup_over_naive()
    );
    println!(
        "shared vs plain decode: {:.1}% of its tokens/s",
        report.fraction_of_plain() * 100.0
    );
    Ok(ExitCode::SUCCESS)
}

fn run_eval(args: EvalArgs) -> Result<ExitCode> {
    let (model, context) = load(&args.model)?;
    let mut scorer = Scorer::new(&model, context)?;
    let reference = match &args.reference_model {
        Some(path) => Some(load_path(path, &args.model.settings)?),
        None => None,
    };
    let mut reference_scorer = match &reference {
        Some((model, context)) => Some(Scorer::new(model, *context)?),
        None => None,
    };
    let cache = args.report.as_deref().map(eval::cache_path);
    if let (true, Some(cache)) = (args.fresh, &cache) {
        match std::fs::remove_file(cache) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot delete {}", cache.display()))
            }
            _ => {}
        }
    }
    let config = eval::EvalConfig {
        data: args.data,
        methods: match (args.method.is_empty(), &reference) {
            (false, _) => args.method,
            (true, None) => eval::methods::Method::DEFAULT.to_vec(),
            // A reference model given is a reference model to use.
            (true, Some(_)) => [Method::DEFAULT, Method::REFERENCE].concat(),
        },
        principle: args.principle,
        limit: args.limit,
        cache,
        model_id: paths::model_id(&model.meta().path),
        progress: !args.quiet,
        plot: args.plot,
    };
    let reference = match (&mut reference_scorer, &args.reference_model) {
        (Some(scorer), Some(path)) => Some(eval::Reference {
            scorer,
            model_id: paths::model_id(path),
        }),
        _ => None,
    };
    let report = eval::run(&mut scorer, reference, &config)?;
    println!("{}", report.table());
    for figure in &report.figures {
        eprintln!("figure: {figure}");
    }
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("report: {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn rpc_worker(args: RpcWorkerArgs) -> Result<ExitCode> {
    if !args.listen.ip().is_loopback() {
        eprintln!(
            "WARNING: listening on {}, not loopback. ggml's RPC protocol has no authentication and \
             no encryption: any host that can reach this port can read the model's weights and \
             activations, run computations here and fill this machine's memory. Only on a network \
             you trust (a private cluster network, a VPN), or firewall the port to the serving \
             machine (docs/SCALE.md).",
            args.listen
        );
    }
    let threads = args.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |n| n as usize,
    );
    let options = WorkerOptions {
        listen: args.listen,
        threads,
        cache_dir: args.cache.as_deref(),
    };
    match endorm::engine::run_worker(&options)? {}
}
