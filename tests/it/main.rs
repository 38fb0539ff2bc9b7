//! endorm's integration tests, one binary (llama.cpp is linked once): the real default model
//! (SmolLM2-135M-Instruct from `endorm pull`) in process, and the real `endorm` binary
//! as a daemon on a private socket.

mod common;
mod support;

mod batching;
mod daemon;
mod daemon_config;
mod daemon_faults;
mod daemon_lifecycle;
#[cfg(feature = "vulkan")]
mod device;
#[cfg(feature = "cpu-dispatch")]
mod dispatch;
mod eval;
mod fairness;
mod faults;
mod first_hour;
mod fuzz;
mod offline;
mod pull;
mod reference;
mod reliability;
mod rpc;
mod scoring;
