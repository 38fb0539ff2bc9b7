//! llama.cpp names the cause of a failed load only in its log ("tensor data is not within the
//! file bounds", "invalid magic", ...), and its API returns a bare null. While a model loads, the
//! loading thread's log events (which llama-cpp-2 sends to `tracing` on that thread) are also kept
//! here, so the load error can quote them. Every event still reaches the subscriber it would have.
//! The lines that say where the weights went (layers offloaded, each layer's device, each device's
//! buffer) are kept too, for the log line of a model split over RPC workers and its placement in
//! `/v1/models`. Warnings about a vocabulary that llama.cpp fixes by itself on every load are shown
//! at debug level ([`is_noise`]).

use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Level, Metadata, Subscriber};

/// The target llama-cpp-2 gives every llama.cpp and ggml log event.
const LLAMA_TARGET: &str = "llama-cpp-2";
/// How many of the last warning and error lines a load error quotes.
const KEPT_LINES: usize = 4;
/// What llama.cpp's lines about the weights' placement contain (llama-model.cpp, `load_tensors`):
/// the layers offloaded, each device's buffer, and (at debug level) each layer's device.
const PLACEMENT: [&str; 3] = ["to GPU", "model buffer size", "assigned to device"];

/// What llama.cpp logged while a model loaded.
#[derive(Debug, Default)]
pub struct Log {
    /// The last few warning and error lines (oldest first).
    pub problems: Vec<String>,
    /// The lines that say where the weights went.
    pub placement: Vec<String>,
    /// Warnings shown at debug level instead ([`is_noise`]).
    pub demoted: Vec<String>,
}

/// Runs `f` with llama.cpp's log lines on this thread captured; returns its result and the lines
/// kept.
pub fn capture<T>(f: impl FnOnce() -> T) -> (T, Log) {
    let log = Arc::new(Mutex::new(Log::default()));
    let inner = tracing::dispatcher::get_default(Dispatch::clone);
    let capture = Dispatch::new(Capture {
        inner,
        log: Arc::clone(&log),
    });
    let result = tracing::dispatcher::with_default(&capture, f);
    let log = std::mem::take(&mut *log.lock().unwrap_or_else(|e| e.into_inner()));
    for line in &log.demoted {
        tracing::debug!(target: LLAMA_TARGET, "{line}");
    }
    (result, log)
}

/// llama.cpp's warnings about a model's vocabulary that the model cannot help and that change
/// nothing endorm computes (Qwen2.5's GGUFs: "control-looking token: 128247 '</s>' was not
/// control-type; this is probably a bug in the model. its type will be overridden"), on every load:
/// shown at debug, not warn.
fn is_noise(line: &str) -> bool {
    line.starts_with("control-looking token") && line.contains("was not control-type")
}

fn is_llama(meta: &Metadata<'_>) -> bool {
    meta.target() == LLAMA_TARGET && *meta.level() <= Level::DEBUG
}

struct Capture {
    inner: Dispatch,
    log: Arc<Mutex<Log>>,
}

struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_owned();
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl Subscriber for Capture {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::sometimes()
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        is_llama(meta) || self.inner.enabled(meta)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        None
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.inner.new_span(span)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        self.inner.record(span, values)
    }

    fn record_follows_from(&self, span: &Id, follows: &Id) {
        self.inner.record_follows_from(span, follows)
    }

    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        if is_llama(meta) {
            let mut message = Message(String::new());
            event.record(&mut message);
            let line = message.0.trim().to_owned();
            if is_noise(&line) {
                // Logged again at debug once the load is over (not from inside this dispatch).
                self.log
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .demoted
                    .push(line);
                return;
            }
            if !line.is_empty() {
                let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
                if *meta.level() <= Level::WARN {
                    if log.problems.len() == KEPT_LINES {
                        log.problems.remove(0);
                    }
                    log.problems.push(line);
                } else if PLACEMENT.iter().any(|part| line.contains(part)) {
                    log.placement.push(line);
                }
            }
        }
        if self.inner.enabled(event.metadata()) {
            self.inner.event(event);
        }
    }

    fn enter(&self, span: &Id) {
        self.inner.enter(span)
    }

    fn exit(&self, span: &Id) {
        self.inner.exit(span)
    }

    fn clone_span(&self, id: &Id) -> Id {
        self.inner.clone_span(id)
    }

    fn try_close(&self, id: Id) -> bool {
        self.inner.try_close(id)
    }
}
