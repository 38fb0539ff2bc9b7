//! `endorm rpc-worker`: lend this machine to another endorm as ggml's RPC server.

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use endorm::engine::{run_rpc_server, RpcServerOptions};

#[derive(Args)]
#[command(
    after_help = "Example:\n  endorm rpc-worker --listen 10.0.0.2:50052     # then: endorm serve --rpc 10.0.0.2:50052"
)]
pub struct RpcWorkerArgs {
    /// IPv4 address and port to listen on. Anything but loopback lets every host that can reach
    /// it use this machine, unauthenticated.
    #[arg(long, default_value = "127.0.0.1:50052")]
    pub listen: SocketAddrV4,
    /// CPU threads [default: one per core]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
    /// Keep the large tensors clients send in this directory, so that loading the same model again
    /// sends only their hashes.
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
}

/// Runs `endorm rpc-worker` until the process is stopped.
pub fn run(args: RpcWorkerArgs) -> Result<ExitCode> {
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
    let options = RpcServerOptions {
        listen: args.listen,
        threads,
        cache_dir: args.cache.as_deref(),
    };
    match run_rpc_server(&options)? {}
}
