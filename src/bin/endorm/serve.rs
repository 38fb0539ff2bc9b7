//! `endorm serve`: the daemon, until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Args;

use endorm::catalog;
use endorm::config::Overrides;
use endorm::paths;
use endorm::server::{self, socket, ServeOptions};

use crate::model::SettingsArgs;

/// `endorm serve`.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  endorm serve                                  # the default model on the default socket\n  endorm serve --model qwen2.5-coder-0.5b --listen 127.0.0.1:8765"
)]
pub struct ServeArgs {
    /// Config file [default: `endorm config path`; a missing default file means no config].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Serve this GGUF too (under its file name's id) and make it the default model; works with no
    /// config file at all. A catalogue name (`endorm pull --list`) stands for its installed file.
    #[arg(long, short, value_name = "PATH|NAME")]
    model: Option<PathBuf>,
    /// Unix socket [default: $ENDORM_SOCKET, else the config's, else
    /// $XDG_RUNTIME_DIR/endorm/endorm.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Also serve on this loopback TCP address (e.g. 127.0.0.1:8765); requests need
    /// `Authorization: Bearer TOKEN`.
    #[arg(long, value_name = "HOST:PORT", value_parser = listen_address)]
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

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(args: ServeArgs) -> Result<ExitCode> {
    let (config, config_required) = match args.config {
        Some(path) => (Some(path), true),
        None => (paths::config_file(), false),
    };
    let options = ServeOptions {
        config,
        config_required,
        overrides: Overrides {
            model: args.model.as_deref().map(catalog::resolve),
            settings: args.settings.settings(),
        },
        socket: args.socket,
        listen: args.listen,
        token: token(args.token, args.token_file.as_deref())?,
        token_file: args.token_file,
        exit_on_eof: args.exit_on_eof,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("endorm-http")
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(server::serve(options));
    // The daemon has stopped (its grace period is over): tokenizing left behind by a client that
    // is gone, still on a blocking thread, does not hold up the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    served?;
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

/// A `--listen` address: `HOST:PORT`; a bare port is refused with the address to write instead.
fn listen_address(value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|_| match value.parse::<u16>() {
        Ok(port) => format!("a port alone is not an address: write 127.0.0.1:{port}"),
        Err(_) => format!("{value:?} is not an address: write HOST:PORT, e.g. 127.0.0.1:8765"),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bare_port_is_answered_with_the_address_to_write() {
        assert_eq!(
            super::listen_address("8765").unwrap_err(),
            "a port alone is not an address: write 127.0.0.1:8765"
        );
        assert!(super::listen_address("localhost")
            .unwrap_err()
            .contains("HOST:PORT"));
        assert_eq!(
            super::listen_address("[::1]:9").unwrap().to_string(),
            "[::1]:9"
        );
    }
}
