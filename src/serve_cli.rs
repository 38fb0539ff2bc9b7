//! The `serve` and `config` subcommands of the `endorm` binary (a module of main.rs).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};

use endorm::config::{Config, ModelSettings, Overrides};
use endorm::engine::RpcEndpoint;
use endorm::paths;
use endorm::server::{self, socket, ServeOptions};

/// The per-model flags of every command that runs a model. With `serve` they override every
/// served model's settings (over the config); elsewhere they override the built-in defaults.
#[derive(Args)]
pub struct SettingsArgs {
    /// Context window in tokens [default: the model's trained context, at most 4096]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    n_ctx: Option<u32>,
    /// CPU threads [default: one per core]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    threads: Option<u32>,
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), help = built_in_help(
        "Tokens per llama.cpp decode",
        ModelSettings::BUILT_IN.n_batch,
    ))]
    n_batch: Option<u32>,
    #[arg(long, help = built_in_help(
        "Layers to offload to the GPU (builds with --features cuda/metal/vulkan)",
        ModelSettings::BUILT_IN.n_gpu_layers,
    ))]
    n_gpu_layers: Option<u32>,
    /// ggml RPC workers (`endorm rpc-worker`), comma-separated HOST:PORT: the model's layers are
    /// split over them (all layers unless --n-gpu-layers says how many). No authentication:
    /// docs/SCALE.md.
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT,...")]
    rpc: Option<Vec<RpcEndpoint>>,
}

impl SettingsArgs {
    /// The settings these flags set.
    pub fn settings(&self) -> ModelSettings {
        ModelSettings {
            n_ctx: self.n_ctx,
            n_threads: self.threads,
            n_batch: self.n_batch,
            n_gpu_layers: self.n_gpu_layers,
            rpc: self.rpc.clone(),
            ..ModelSettings::default()
        }
    }
}

fn built_in_help(what: &str, default: Option<u32>) -> String {
    match default {
        Some(value) => format!("{what} [default: {value}]"),
        None => what.to_owned(),
    }
}

/// `endorm serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Config file [default: `endorm config path`; a missing default file means no config].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Serve this GGUF too (under its file name's id) and make it the default model; works with no
    /// config file at all.
    #[arg(long, short)]
    model: Option<PathBuf>,
    /// Unix socket [default: $ENDORM_SOCKET, else the config's, else
    /// $XDG_RUNTIME_DIR/endorm/endorm.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Also serve on this loopback TCP address (e.g. 127.0.0.1:8765); requests need
    /// `Authorization: Bearer TOKEN`.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The TCP bearer token, at least 32 characters [default: read from (or created in) the token
    /// file]. Other users can read a command line (`ps`): prefer --token-file or ENDORM_TOKEN.
    #[arg(long, conflicts_with = "token_file")]
    token: Option<String>,
    /// Read the TCP bearer token from this file (created 0600 with a random token when missing),
    /// over the config's `token_file`; unlike --token, it does not show in `ps`.
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Shut down when standard input closes (for an editor or test that starts the daemon as its child).
    #[arg(long)]
    exit_on_eof: bool,
    /// Over every served model's settings in the config.
    #[command(flatten, next_help_heading = "Model settings (over the config's)")]
    settings: SettingsArgs,
}

/// `endorm config ...`.
#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Print where the config file is read from (and whether it exists).
    Path,
    /// Print the config with every default filled in, and the models it serves.
    Show(ConfigFile),
    /// Validate the config: TOML, values, and that each model file exists. Exit 1 when invalid.
    Check(ConfigFile),
}

/// Which config file.
#[derive(Args)]
pub struct ConfigFile {
    /// Config file [default: `endorm config path`].
    #[arg(long)]
    config: Option<PathBuf>,
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn serve(args: ServeArgs) -> Result<ExitCode> {
    let (config, config_required) = match args.config {
        Some(path) => (Some(path), true),
        None => (paths::config_file(), false),
    };
    let options = ServeOptions {
        config,
        config_required,
        overrides: Overrides {
            model: args.model,
            settings: args.settings.settings(),
        },
        socket: args.socket,
        listen: args.listen,
        token: token(args.token, args.token_file.as_deref())?,
        exit_on_eof: args.exit_on_eof,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("endorm-http")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(server::serve(options))?;
    Ok(ExitCode::SUCCESS)
}

/// The TCP token from `--token`, `--token-file` or `ENDORM_TOKEN` (in that order), checked; `None`
/// leaves it to the config's token file.
fn token(flag: Option<String>, file: Option<&Path>) -> Result<Option<String>> {
    if let Some(path) = file {
        let token = socket::token_from_file(path)?;
        tracing::info!(path = %path.display(), "TCP bearer token is in this file");
        return Ok(Some(token));
    }
    let token = match flag {
        Some(token) => {
            tracing::warn!(
                "--token puts the token on the command line, visible to other users of this machine \
                 (ps, /proc): pass --token-file PATH or ENDORM_TOKEN instead"
            );
            token
        }
        None => match std::env::var("ENDORM_TOKEN") {
            Ok(token) if !token.is_empty() => token,
            _ => return Ok(None),
        },
    };
    socket::check_token(&token).map_err(anyhow::Error::msg)?;
    Ok(Some(token))
}

/// `endorm config path|show|check`.
pub fn config(command: ConfigCommand) -> Result<ExitCode> {
    match command {
        ConfigCommand::Path => {
            let path = paths::config_file().context("no config directory on this system")?;
            let (state, configured) = match Config::load(&path) {
                Ok(config) => ("exists", config.server.socket),
                Err(_) if path.exists() => ("exists, not valid: `endorm config check`", None),
                Err(_) => ("does not exist: defaults apply", None),
            };
            println!("{}", path.display());
            eprintln!(
                "({state}; the daemon listens on {})",
                display(paths::socket(None, configured.as_deref()))
            );
            Ok(ExitCode::SUCCESS)
        }
        ConfigCommand::Show(file) => {
            let (path, config) = load(file)?;
            println!("# {}", path.display());
            print!("{}", config.show().context("cannot print the config")?);
            let specs = config.model_specs(&Overrides::default());
            let default = config.default_model_id(&specs, None);
            println!("\n# served models:");
            for spec in &specs {
                let mark = if default.as_deref() == Some(spec.id.as_str()) {
                    " (default)"
                } else {
                    ""
                };
                println!("#   {}{mark}: {}", spec.id, spec.worker.path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        ConfigCommand::Check(file) => {
            let (path, config) = load(file)?;
            let specs = config.model_specs(&Overrides::default());
            let missing: Vec<String> = specs
                .iter()
                .filter(|spec| !spec.worker.path.is_file())
                .map(|spec| {
                    format!(
                        "model {}: no file at {}",
                        spec.id,
                        spec.worker.path.display()
                    )
                })
                .collect();
            if !missing.is_empty() {
                bail!("{}: {}", path.display(), missing.join("; "));
            }
            println!("{}: ok, {} model(s)", path.display(), specs.len());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn load(file: ConfigFile) -> Result<(PathBuf, Config)> {
    match file.config {
        Some(path) => Ok((path.clone(), Config::load(&path)?)),
        None => {
            let path = paths::config_file().context("no config directory on this system")?;
            let config = if path.exists() {
                Config::load(&path)?
            } else {
                Config::default()
            };
            Ok((path, config))
        }
    }
}

fn display(path: Option<PathBuf>) -> String {
    path.map_or_else(
        || "(no runtime directory)".into(),
        |p| p.display().to_string(),
    )
}
