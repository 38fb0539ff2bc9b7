//! llama.cpp names the cause of a failed load only in its log ("tensor data is not within the
//! file bounds", "invalid magic", ...), and its API returns a bare null. While a model loads, the
//! loading thread's log events (which llama-cpp-2 sends to `tracing` on that thread) are also kept
//! here, so the load error can quote them. Every event still reaches the subscriber it would have.

use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Level, Metadata, Subscriber};

/// The target llama-cpp-2 gives every llama.cpp and ggml log event.
const LLAMA_TARGET: &str = "llama-cpp-2";
/// How many of the last warning and error lines a load error quotes.
const KEPT_LINES: usize = 4;

/// Runs `f` with llama.cpp's warnings and errors on this thread captured; returns its result and
/// the last few captured lines (oldest first).
pub fn capture<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let inner = tracing::dispatcher::get_default(Dispatch::clone);
    let capture = Dispatch::new(Capture {
        inner,
        lines: Arc::clone(&lines),
    });
    let result = tracing::dispatcher::with_default(&capture, f);
    let lines = std::mem::take(&mut *lines.lock().unwrap_or_else(|e| e.into_inner()));
    (result, lines)
}

fn is_llama_problem(meta: &Metadata<'_>) -> bool {
    meta.target() == LLAMA_TARGET && *meta.level() <= Level::WARN
}

struct Capture {
    inner: Dispatch,
    lines: Arc<Mutex<Vec<String>>>,
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
        is_llama_problem(meta) || self.inner.enabled(meta)
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
        if is_llama_problem(event.metadata()) {
            let mut message = Message(String::new());
            event.record(&mut message);
            let line = message.0.trim().to_owned();
            if !line.is_empty() {
                let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
                if lines.len() == KEPT_LINES {
                    lines.remove(0);
                }
                lines.push(line);
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
