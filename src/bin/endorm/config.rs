//! `endorm config path|show|check`: where the daemon's config is, what it holds, whether it is
//! valid.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};

use endorm::catalog;
use endorm::config::{Config, Overrides};
use endorm::paths;

/// `endorm config ...`.
#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Print where the config file is read from (and whether it exists), or with a flag one other
    /// path, alone on its line, for scripts.
    #[command(
        after_help = "Examples:\n  endorm config path\n  SOCK=$(endorm config path --socket)\n  curl --unix-socket \"$SOCK\" http://localhost/health"
    )]
    Path(PathArgs),
    /// Print the config with every default filled in, and the models it serves.
    #[command(after_help = "Example:\n  endorm config show --config config/endorm.toml")]
    Show(ConfigFile),
    /// Validate the config: TOML, values, and that each model file exists. Exit 1 when invalid.
    #[command(
        after_help = "Example:\n  endorm config check --config ~/.config/endorm/config.toml"
    )]
    Check(ConfigFile),
}

/// `endorm config path`'s flags.
#[derive(Args)]
pub struct PathArgs {
    /// Print only the socket the daemon listens on (`--socket` aside: `$ENDORM_SOCKET`, the
    /// config's, else the default), one line.
    #[arg(long, conflicts_with = "token")]
    socket: bool,
    /// Print only the TCP token file's path (the config's `token_file`, else the default), one
    /// line.
    #[arg(long)]
    token: bool,
    /// Config file [default: the one printed without flags].
    #[arg(long)]
    config: Option<PathBuf>,
}

/// Which config file.
#[derive(Args)]
pub struct ConfigFile {
    /// Config file [default: `endorm config path`].
    #[arg(long)]
    config: Option<PathBuf>,
}

/// `endorm config path|show|check`.
pub fn run(command: ConfigCommand) -> Result<ExitCode> {
    match command {
        ConfigCommand::Path(args) => {
            let path = match args.config {
                Some(path) => path,
                None => paths::config_file().context("no config directory on this system")?,
            };
            let (state, server) = match Config::load(&path) {
                Ok(config) => ("exists", config.server),
                Err(_) if path.exists() => (
                    "exists, not valid: `endorm config check`",
                    Default::default(),
                ),
                Err(_) => ("does not exist: defaults apply", Default::default()),
            };
            let socket = paths::socket(None, server.socket.as_deref());
            if args.socket || args.token {
                let (what, chosen) = if args.socket {
                    ("socket", socket)
                } else {
                    (
                        "token file",
                        server.token_file.or_else(paths::default_token_file),
                    )
                };
                let chosen = chosen.with_context(|| {
                    format!("no runtime directory for the {what} on this system: name one in the config")
                })?;
                println!("{}", chosen.display());
                return Ok(ExitCode::SUCCESS);
            }
            println!("{}", path.display());
            eprintln!("({state}; the daemon listens on {})", display(socket));
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
            let what = if path.exists() {
                path.display().to_string()
            } else {
                format!(
                    "no config file at {} (the defaults apply: the default model)",
                    path.display()
                )
            };
            let specs = config.model_specs(&Overrides::default());
            let missing: Vec<String> = specs
                .iter()
                .filter(|spec| !spec.worker.path.is_file())
                .map(|spec| {
                    let fix = catalog::of_path(&spec.worker.path)
                        .map(|entry| format!(" (`{}` installs it)", entry.pull_hint()))
                        .unwrap_or_default();
                    format!(
                        "model {}: no file at {}{fix}",
                        spec.id,
                        spec.worker.path.display()
                    )
                })
                .collect();
            if !missing.is_empty() {
                bail!("{what}: {}", missing.join("; "));
            }
            println!("{what}: ok, {} model(s)", specs.len());
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
