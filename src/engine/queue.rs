//! The queue in front of a model's worker: one FIFO per client, served round-robin, so a client
//! that queued many jobs (a batch run, RL training) delays another client's job by at most one of
//! its jobs per turn, not by all of them (docs/RELIABILITY.md, "Fairness").
//!
//! One capacity counts the jobs of every client together (the daemon's `queue_depth`). Closing
//! the queue refuses new jobs; those already queued are still handed out, then [`FairQueue::pop`]
//! answers `None`, which ends the worker as a closed channel did.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// Who submitted a job: the unit the queue is fair between. The server decides it once per
/// connection (or from the `X-Endorm-Client` header); the engine only compares them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientId {
    /// A local process: the pid of the Unix socket's peer, however many connections it opens.
    Process(u32),
    /// One connection (a TCP peer, or a Unix peer whose pid is unknown), numbered by the server.
    Connection(u64),
    /// A name the client gave itself with `X-Endorm-Client`.
    Named(Arc<str>),
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientId::Process(pid) => write!(f, "pid:{pid}"),
            ClientId::Connection(serial) => write!(f, "connection:{serial}"),
            ClientId::Named(name) => write!(f, "name:{name}"),
        }
    }
}

/// Why [`FairQueue::push`] did not queue a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds its capacity of jobs already.
    Full,
    /// The queue was closed.
    Closed,
}

/// Per-client FIFOs served round-robin, with one capacity for all of them.
pub struct FairQueue<T> {
    inner: Mutex<Inner<T>>,
    ready: Condvar,
    capacity: usize,
}

struct Inner<T> {
    /// The clients with queued jobs, in the order of their next turn; never an empty FIFO.
    turns: VecDeque<(ClientId, VecDeque<T>)>,
    len: usize,
    closed: bool,
}

impl<T> Inner<T> {
    /// The next job in the fair order, if `accept` takes it: the first client's oldest job, after
    /// which that client's turn goes to the back of the line.
    fn take_if(&mut self, accept: impl FnOnce(&T) -> bool) -> Option<T> {
        let next = self.turns.front().and_then(|(_, items)| items.front())?;
        if !accept(next) {
            return None;
        }
        let (client, mut items) = self.turns.pop_front()?;
        let item = items.pop_front();
        if !items.is_empty() {
            self.turns.push_back((client, items));
        }
        self.len -= 1;
        item
    }
}

impl<T> FairQueue<T> {
    /// An empty queue holding at most `capacity` jobs (at least one).
    pub fn new(capacity: usize) -> FairQueue<T> {
        FairQueue {
            inner: Mutex::new(Inner {
                turns: VecDeque::new(),
                len: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    // A job that panicked ran outside the lock: a poisoned lock still holds a consistent queue.
    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `item` behind `client`'s earlier jobs; a client with none joins the end of the line.
    pub fn push(&self, client: &ClientId, item: T) -> Result<(), Refused> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(Refused::Closed);
        }
        if inner.len >= self.capacity {
            return Err(Refused::Full);
        }
        match inner.turns.iter_mut().find(|(id, _)| id == client) {
            Some((_, items)) => items.push_back(item),
            None => inner
                .turns
                .push_back((client.clone(), VecDeque::from([item]))),
        }
        inner.len += 1;
        drop(inner);
        self.ready.notify_one();
        Ok(())
    }

    /// The next job in the fair order, waiting for one; `None` once the queue is closed and empty.
    pub fn pop(&self) -> Option<T> {
        let mut inner = self.lock();
        loop {
            if let Some(item) = inner.take_if(|_| true) {
                return Some(item);
            }
            if inner.closed {
                return None;
            }
            inner = self
                .ready
                .wait(inner)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The next job in the fair order if there is one and `accept` takes it; else it stays first.
    pub fn pop_if(&self, accept: impl FnOnce(&T) -> bool) -> Option<T> {
        self.lock().take_if(accept)
    }

    /// Jobs waiting, all clients together.
    pub fn len(&self) -> usize {
        self.lock().len
    }

    /// Refuses new jobs; those queued are still handed out.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Closes the queue and drops every job in it (the consumer is gone: nobody would run them).
    pub fn discard(&self) {
        let dropped = {
            let mut inner = self.lock();
            inner.closed = true;
            inner.len = 0;
            std::mem::take(&mut inner.turns)
        };
        // Dropped outside the lock: a job's drop may run arbitrary code (its reply channel).
        drop(dropped);
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> ClientId {
        ClientId::Named(name.into())
    }

    fn drain(queue: &FairQueue<&'static str>) -> Vec<&'static str> {
        std::iter::from_fn(|| queue.pop_if(|_| true)).collect()
    }

    #[test]
    fn clients_take_turns_and_each_keeps_its_own_order() {
        let queue = FairQueue::new(16);
        for job in ["a1", "a2", "a3", "a4"] {
            queue.push(&named("a"), job).unwrap();
        }
        queue.push(&ClientId::Process(7), "b1").unwrap();
        queue.push(&ClientId::Connection(3), "c1").unwrap();
        queue.push(&ClientId::Process(7), "b2").unwrap();
        assert_eq!(queue.len(), 7);
        assert_eq!(drain(&queue), ["a1", "b1", "c1", "a2", "b2", "a3", "a4"]);
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn a_client_that_comes_back_joins_the_end_of_the_line() {
        let queue = FairQueue::new(16);
        queue.push(&named("a"), "a1").unwrap();
        queue.push(&named("a"), "a2").unwrap();
        assert_eq!(queue.pop(), Some("a1"));
        // b arrives while a's second job waits: b runs right after it, a's third after b.
        queue.push(&named("b"), "b1").unwrap();
        queue.push(&named("a"), "a3").unwrap();
        assert_eq!(drain(&queue), ["a2", "b1", "a3"]);
        // One job at a time (a request's items queued one after another) still takes turns.
        queue.push(&named("b"), "b2").unwrap();
        queue.push(&named("a"), "a4").unwrap();
        assert_eq!(queue.pop(), Some("b2"));
        queue.push(&named("b"), "b3").unwrap();
        assert_eq!(drain(&queue), ["a4", "b3"]);
    }

    #[test]
    fn the_capacity_counts_every_client_together() {
        let queue = FairQueue::new(3);
        queue.push(&named("a"), "a1").unwrap();
        queue.push(&named("a"), "a2").unwrap();
        queue.push(&named("b"), "b1").unwrap();
        assert_eq!(queue.push(&named("c"), "c1"), Err(Refused::Full));
        assert_eq!(queue.push(&named("a"), "a3"), Err(Refused::Full));
        assert_eq!(queue.pop(), Some("a1"));
        assert_eq!(queue.push(&named("c"), "c1"), Ok(()));
        assert_eq!(drain(&queue), ["b1", "a2", "c1"]);
        assert_eq!(FairQueue::<u8>::new(0).push(&named("a"), 1), Ok(()));
    }

    #[test]
    fn a_refused_peek_leaves_the_job_first() {
        let queue = FairQueue::new(4);
        queue.push(&named("a"), "a1").unwrap();
        queue.push(&named("b"), "b1").unwrap();
        assert_eq!(queue.pop_if(|job| job.starts_with('b')), None);
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.pop_if(|job| job.starts_with('a')), Some("a1"));
        assert_eq!(queue.pop_if(|_| true), Some("b1"));
        assert_eq!(queue.pop_if(|_| true), None);
    }

    #[test]
    fn closing_refuses_new_jobs_and_hands_out_the_queued_ones_then_none() {
        let queue = Arc::new(FairQueue::new(4));
        let consumer = {
            let queue = Arc::clone(&queue);
            std::thread::spawn(move || std::iter::from_fn(|| queue.pop()).collect::<Vec<_>>())
        };
        queue.push(&named("a"), "a1").unwrap();
        queue.push(&named("b"), "b1").unwrap();
        queue.close();
        assert_eq!(queue.push(&named("a"), "a2"), Err(Refused::Closed));
        let popped = consumer.join().unwrap();
        assert_eq!(popped, ["a1", "b1"]);
    }

    #[test]
    fn discarding_drops_the_queued_jobs() {
        let queue = FairQueue::new(4);
        let job = Arc::new(());
        queue.push(&named("a"), Arc::clone(&job)).unwrap();
        queue.discard();
        assert_eq!(Arc::strong_count(&job), 1);
        assert_eq!(queue.pop(), None);
        assert_eq!(queue.push(&named("a"), job), Err(Refused::Closed));
    }
}
