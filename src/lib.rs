//! endorm: a local reward model. Any language model trained by next-token prediction holds a
//! reward model in its logits (Li et al., 2025); endorm computes that endogenous reward with
//! llama.cpp and serves it to editors, agents and batch jobs.
//!
//! * [`reward`] — the math of REWARD.md, free of llama.cpp.
//! * [`engine`] — models, tokens and the shared-prefix batched decode.
//! * [`api`] — the wire types of API.md.
//! * [`offline`] — JSONL in, JSONL out, resumable ([`jsonl`]).
//! * [`server`] — the daemon: HTTP over a Unix socket; [`config`] — its TOML config;
//!   [`web`] — the lens, the page it serves at `GET /`.
//! * [`catalog`] — the models `endorm pull` installs by name; [`pull`] — installs them.

pub mod api;
pub mod bench;
pub mod catalog;
pub mod config;
pub mod engine;
pub mod eval;
mod jsonl;
#[cfg(test)]
mod layers;
pub mod offline;
pub mod paths;
pub mod progress;
pub mod pull;
pub mod reward;
pub mod server;
pub mod web;
