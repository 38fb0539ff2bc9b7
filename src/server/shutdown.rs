//! The daemon's shutdown, as one handle every part holds (mini-redis's `Shutdown`): a signal or
//! the end of standard input asks for it, the accept loops stop on it, and when the grace period
//! runs out every request still waiting for its job answers 503 at once.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::watch;

use super::error::ApiError;

/// Where the daemon is in its shutdown. Each daemon (and each test's `App`) has its own.
#[derive(Debug)]
pub struct Shutdown {
    /// Set when a stop was asked for: the accept loops stop.
    stop: watch::Sender<bool>,
    /// Set when the grace period ran out: requests still waiting answer 503.
    grace_over: watch::Sender<bool>,
    /// Requests answered 503 because the grace period ran out.
    refused: AtomicUsize,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            stop: watch::channel(false).0,
            grace_over: watch::channel(false).0,
            refused: AtomicUsize::new(0),
        }
    }
}

impl Shutdown {
    /// Asks the daemon to stop (a signal, the end of standard input).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// A receiver that sees the stop, for the accept loops.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Waits until a stop is asked for.
    pub async fn stopped(&self) {
        let _ = self.stopping().wait_for(|&stop| stop).await;
    }

    /// The grace period ran out: every request still waiting for a job answers 503.
    pub fn end_grace(&self) {
        self.grace_over.send_replace(true);
    }

    /// Whether the grace period ran out.
    pub fn is_grace_over(&self) -> bool {
        *self.grace_over.borrow()
    }

    /// Waits until the grace period runs out.
    pub async fn grace_over(&self) {
        let _ = self.grace_over.subscribe().wait_for(|&over| over).await;
    }

    /// Requests answered 503 because the grace period ran out.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    /// The 503 of a request still waiting when the grace period ran out (counted).
    pub fn refuse(&self) -> ApiError {
        self.refused.fetch_add(1, Ordering::SeqCst);
        ApiError::unavailable(
            "shutting_down",
            "the daemon is shutting down and its grace period (shutdown_grace_secs) ran out \
             before this request was served: retry once it is back",
            1,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_stop_wakes_the_waiters_and_the_end_of_grace_refuses_with_503() {
        let shutdown = std::sync::Arc::new(Shutdown::default());
        let waiter = tokio::spawn({
            let shutdown = std::sync::Arc::clone(&shutdown);
            async move { shutdown.stopped().await }
        });
        shutdown.stop();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined");
        assert!(!shutdown.is_grace_over());
        shutdown.end_grace();
        tokio::time::timeout(Duration::from_secs(5), shutdown.grace_over())
            .await
            .expect("over");
        let refused = shutdown.refuse();
        assert_eq!(refused.status.as_u16(), 503);
        assert_eq!(refused.retry_after, Some(1));
        assert_eq!(shutdown.refused(), 1);
    }

    #[test]
    fn each_daemon_has_its_own() {
        let (a, b) = (Shutdown::default(), Shutdown::default());
        a.end_grace();
        assert!(!b.is_grace_over());
    }
}
