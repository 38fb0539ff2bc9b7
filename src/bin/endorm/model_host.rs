//! `endorm model-host` (hidden): the process in which `endorm serve` runs a model whose layers are
//! on RPC workers, so that a lost worker ends this process and not the daemon (src/engine/host.rs).

use std::process::ExitCode;

use anyhow::Result;

/// Serves the daemon on standard input and output until it closes them.
pub fn run() -> Result<ExitCode> {
    endorm::engine::run_model_host()?;
    Ok(ExitCode::SUCCESS)
}
