//! Stopping CPU work nobody waits for any more. The daemon tokenizes a request on a blocking
//! thread; when its client leaves, the handler raises the request's [`Flag`], and the long loops
//! of tokenizing (a text's pieces, a request's candidates and messages) stop at their next step
//! with [`EngineError::Cancelled`]. Work run without a flag (the offline scorer, `eval`) is never
//! cancelled.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::EngineError;

/// Raised when the work's requester is gone.
#[derive(Debug, Clone, Default)]
pub struct Flag(Arc<AtomicBool>);

impl Flag {
    /// Asks the work under this flag to stop.
    pub fn raise(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether it was raised.
    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Runs `work` on this thread under this flag: [`check`] inside it answers to the flag.
    pub fn run<T>(&self, work: impl FnOnce() -> T) -> T {
        struct Restore(Option<Flag>);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|current| *current.borrow_mut() = self.0.take());
            }
        }
        let previous = CURRENT.with(|current| current.borrow_mut().replace(self.clone()));
        let _restore = Restore(previous);
        work()
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Flag>> = const { RefCell::new(None) };
}

/// `Err(Cancelled)` when the flag of the work running on this thread was raised.
pub fn check() -> Result<(), EngineError> {
    let raised = CURRENT.with(|current| current.borrow().as_ref().is_some_and(Flag::is_raised));
    if raised {
        Err(EngineError::Cancelled)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_stops_once_its_flag_is_raised_and_only_under_it() {
        let flag = Flag::default();
        assert!(flag.run(check).is_ok());
        flag.raise();
        assert!(matches!(flag.run(check), Err(EngineError::Cancelled)));
        // Outside the flag's work, and under another flag, nothing is cancelled.
        assert!(check().is_ok());
        assert!(Flag::default().run(check).is_ok());
    }

    #[test]
    fn a_flag_applies_to_its_own_thread_only() {
        let flag = Flag::default();
        flag.raise();
        flag.run(|| {
            let other = std::thread::spawn(check).join().expect("joined");
            assert!(other.is_ok());
            assert!(check().is_err());
        });
    }
}
