//! Counters for `GET /metrics`, in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use super::registry::Snapshot;
use crate::engine::WorkerState;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// What the daemon has done since it started.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    tokens: AtomicU64,
    cached_tokens: AtomicU64,
    reloads: AtomicU64,
    reload_errors: AtomicU64,
}

impl Metrics {
    /// Counts one finished request.
    pub fn record(&self, route: &str, status: u16, seconds: f64, tokens: u64, cached_tokens: u64) {
        *self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((route.to_owned(), status))
            .or_default() += 1;
        let mut latency = self.latency.lock().unwrap_or_else(PoisonError::into_inner);
        let histogram = latency.entry(route.to_owned()).or_default();
        for (count, &bound) in histogram.counts.iter_mut().zip(&BUCKETS) {
            if seconds <= bound {
                *count += 1;
            }
        }
        histogram.count += 1;
        histogram.sum += seconds;
        self.tokens.fetch_add(tokens, Ordering::Relaxed);
        self.cached_tokens
            .fetch_add(cached_tokens, Ordering::Relaxed);
    }

    /// Counts a config reload, applied or not.
    pub fn reload(&self, ok: bool) {
        let counter = if ok {
            &self.reloads
        } else {
            &self.reload_errors
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut text = String::from(
            "# HELP endorm_requests_total HTTP requests by route and status.\n\
             # TYPE endorm_requests_total counter\n",
        );
        for ((route, status), count) in self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                text,
                "endorm_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}"
            );
        }
        let _ = writeln!(
            text,
            "# HELP endorm_request_duration_seconds Request latency by route.\n\
             # TYPE endorm_request_duration_seconds histogram"
        );
        for (route, h) in self
            .latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            for (count, bound) in h.counts.iter().zip(BUCKETS) {
                let _ = writeln!(
                    text,
                    "endorm_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                text,
                "endorm_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}\n\
                 endorm_request_duration_seconds_sum{{route=\"{route}\"}} {}\n\
                 endorm_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count, h.sum, h.count
            );
        }
        for (name, help, value) in [
            (
                "endorm_tokens_total",
                "Tokens evaluated (context and candidates).",
                &self.tokens,
            ),
            (
                "endorm_cached_tokens_total",
                "Context tokens served from the prefix cache.",
                &self.cached_tokens,
            ),
            (
                "endorm_config_reloads_total",
                "Config changes applied.",
                &self.reloads,
            ),
            (
                "endorm_config_reload_errors_total",
                "Config changes refused.",
                &self.reload_errors,
            ),
        ] {
            let _ = writeln!(
                text,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let cancelled: usize = snapshot
            .models
            .values()
            .filter_map(|entry| entry.worker.as_ref().ok())
            .map(|worker| worker.cancelled())
            .sum();
        let _ = writeln!(
            text,
            "# HELP endorm_jobs_cancelled_total Jobs skipped because the client left first.\n\
             # TYPE endorm_jobs_cancelled_total counter\nendorm_jobs_cancelled_total {cancelled}"
        );
        let _ = writeln!(
            text,
            "# HELP endorm_queue_waiting Requests waiting for a model.\n# TYPE endorm_queue_waiting gauge\n\
             # HELP endorm_queue_running Requests a model is running.\n# TYPE endorm_queue_running gauge\n\
             # HELP endorm_batched_requests_total Requests scored in a pass shared with others.\n# TYPE endorm_batched_requests_total counter\n\
             # HELP endorm_model_state 1 for the state each model is in.\n# TYPE endorm_model_state gauge"
        );
        for (id, entry) in &snapshot.models {
            if let Ok(worker) = &entry.worker {
                let _ = writeln!(
                    text,
                    "endorm_queue_waiting{{model=\"{id}\"}} {}",
                    worker.waiting()
                );
                let _ = writeln!(
                    text,
                    "endorm_queue_running{{model=\"{id}\"}} {}",
                    worker.running()
                );
                let _ = writeln!(
                    text,
                    "endorm_batched_requests_total{{model=\"{id}\"}} {}",
                    worker.batched()
                );
            }
            let state = state_name(&entry.state());
            for name in ["loading", "ready", "failed"] {
                let _ = writeln!(
                    text,
                    "endorm_model_state{{model=\"{id}\",state=\"{name}\"}} {}",
                    u8::from(name == state)
                );
            }
        }
        let _ = writeln!(
            text,
            "# HELP endorm_config_error 1 when the config on disk could not be applied.\n\
             # TYPE endorm_config_error gauge\nendorm_config_error {}",
            u8::from(snapshot.config_error.is_some())
        );
        text
    }
}

/// The wire name of a worker state.
pub fn state_name(state: &WorkerState) -> &'static str {
    match state {
        WorkerState::Loading => "loading",
        WorkerState::Ready(_) => "ready",
        WorkerState::Failed(_) => "failed",
        WorkerState::Lost(_) => "degraded",
    }
}
