//! The queue in front of a model's worker: one FIFO per client, served round-robin, so a client
//! that queued many jobs (a batch run, RL training) delays another client's job by at most one of
//! its jobs per turn, not by all of them (docs/RELIABILITY.md, "Fairness").
//!
//! One capacity counts the jobs of every client together (the daemon's `queue_depth`), except that
//! a client with nothing queued may always queue one job, up to twice the capacity in all: a
//! client that fills the queue cannot make another's single request a 503. Closing the queue
//! refuses new jobs; those already queued are still handed out, then [`FairQueue::pop`] answers
//! `None`, which ends the worker as a closed channel did.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

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
    /// The queue holds its capacity of jobs already (twice it, for a client with none queued).
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
    fn take_if(&mut self, accept: impl FnOnce(&T) -> bool) -> Option<(ClientId, T)> {
        let next = self.turns.front().and_then(|(_, items)| items.front())?;
        if !accept(next) {
            return None;
        }
        self.take_turn(0)
    }

    /// The oldest job of the client whose turn is `index`-th; that client goes to the back.
    fn take_turn(&mut self, index: usize) -> Option<(ClientId, T)> {
        let (client, mut items) = self.turns.remove(index)?;
        let item = items.pop_front()?;
        if !items.is_empty() {
            self.turns.push_back((client.clone(), items));
        }
        self.len -= 1;
        Some((client, item))
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
    ///
    /// A full queue still takes the job of a client with nothing queued, up to twice its capacity:
    /// the room beyond the capacity is kept for the clients that wait for one job each (an editor
    /// beside a batch run that keeps the queue full).
    pub fn push(&self, client: &ClientId, item: T) -> Result<(), Refused> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(Refused::Closed);
        }
        let turn = inner.turns.iter().position(|(id, _)| id == client);
        let limit = match turn {
            Some(_) => self.capacity,
            None => self.capacity.saturating_mul(2),
        };
        if inner.len >= limit {
            return Err(Refused::Full);
        }
        match turn {
            Some(index) => inner.turns[index].1.push_back(item),
            None => inner
                .turns
                .push_back((client.clone(), VecDeque::from([item]))),
        }
        inner.len += 1;
        drop(inner);
        self.ready.notify_one();
        Ok(())
    }

    /// The next job in the fair order and its client, waiting for one; `None` once the queue is
    /// closed and empty.
    pub fn pop(&self) -> Option<(ClientId, T)> {
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

    /// [`FairQueue::pop`], waiting at most `timeout`: `Err(true)` once the queue is closed and
    /// empty, `Err(false)` when nothing came in time.
    pub fn pop_within(&self, timeout: Duration) -> Result<(ClientId, T), bool> {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        loop {
            if let Some(item) = inner.take_if(|_| true) {
                return Ok(item);
            }
            if inner.closed {
                return Err(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(false);
            }
            inner = self
                .ready
                .wait_timeout(inner, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Whether the queue refuses new jobs (its worker's handle is gone).
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// The next job in the fair order if there is one and `accept` takes it; else it stays first.
    pub fn pop_if(&self, accept: impl FnOnce(&T) -> bool) -> Option<T> {
        self.lock().take_if(accept).map(|(_, item)| item)
    }

    /// The next job of a client other than `running`, whose job is under way and keeps its turn,
    /// among those `fits` takes: what the worker runs between the passes of a long job (see
    /// `worker::Turns`). A client whose next job does not fit keeps its place.
    pub fn pop_other(&self, running: &ClientId, mut fits: impl FnMut(&T) -> bool) -> Option<T> {
        let mut inner = self.lock();
        let index = inner
            .turns
            .iter()
            .position(|(id, items)| id != running && items.front().is_some_and(&mut fits))?;
        inner.take_turn(index).map(|(_, item)| item)
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
        assert_eq!(queue.pop(), Some((named("a"), "a1")));
        // b arrives while a's second job waits: b runs right after it, a's third after b.
        queue.push(&named("b"), "b1").unwrap();
        queue.push(&named("a"), "a3").unwrap();
        assert_eq!(drain(&queue), ["a2", "b1", "a3"]);
        // One job at a time (a request's items queued one after another) still takes turns.
        queue.push(&named("b"), "b2").unwrap();
        queue.push(&named("a"), "a4").unwrap();
        assert_eq!(queue.pop(), Some((named("b"), "b2")));
        queue.push(&named("b"), "b3").unwrap();
        assert_eq!(drain(&queue), ["a4", "b3"]);
    }

    #[test]
    fn the_capacity_counts_every_client_together() {
        let queue = FairQueue::new(3);
        queue.push(&named("a"), "a1").unwrap();
        queue.push(&named("a"), "a2").unwrap();
        queue.push(&named("b"), "b1").unwrap();
        assert_eq!(queue.push(&named("a"), "a3"), Err(Refused::Full));
        assert_eq!(queue.push(&named("b"), "b2"), Err(Refused::Full));
        assert_eq!(queue.pop(), Some((named("a"), "a1")));
        assert_eq!(queue.push(&named("b"), "b2"), Ok(()));
        assert_eq!(queue.push(&named("a"), "a3"), Err(Refused::Full));
        assert_eq!(drain(&queue), ["b1", "a2", "b2"]);
        assert_eq!(FairQueue::<u8>::new(0).push(&named("a"), 1), Ok(()));
    }

    #[test]
    fn a_full_queue_still_takes_one_job_of_a_client_with_none_queued() {
        let queue = FairQueue::new(2);
        queue.push(&named("batch"), "a1").unwrap();
        queue.push(&named("batch"), "a2").unwrap();
        assert_eq!(queue.push(&named("batch"), "a3"), Err(Refused::Full));
        // Clients with nothing queued get in, one job each, up to twice the capacity.
        assert_eq!(queue.push(&named("editor"), "e1"), Ok(()));
        assert_eq!(queue.push(&named("editor"), "e2"), Err(Refused::Full));
        assert_eq!(queue.push(&named("c"), "c1"), Ok(()));
        assert_eq!(queue.push(&named("d"), "d1"), Err(Refused::Full));
        assert_eq!(queue.len(), 4);
        assert_eq!(drain(&queue), ["a1", "e1", "c1", "a2"]);
    }

    #[test]
    fn between_passes_the_next_other_client_runs_and_the_running_one_keeps_its_turn() {
        let queue = FairQueue::new(8);
        for (client, job) in [
            ("a", "a2"),
            ("b", "b1"),
            ("a", "a3"),
            ("c", "c1"),
            ("b", "b2"),
        ] {
            queue.push(&named(client), job).unwrap();
        }
        // a's job runs; between its passes b's and c's go first, a stays at the front.
        let any = |_: &&str| true;
        assert_eq!(queue.pop_other(&named("a"), any), Some("b1"));
        assert_eq!(queue.pop_other(&named("a"), any), Some("c1"));
        assert_eq!(queue.pop_other(&named("a"), any), Some("b2"));
        assert_eq!(queue.pop_other(&named("a"), any), None);
        assert_eq!(drain(&queue), ["a2", "a3"]);
    }

    #[test]
    fn between_passes_a_job_that_does_not_fit_waits_and_the_next_client_that_fits_runs() {
        let queue = FairQueue::new(8);
        for (client, job) in [("b", "b-big"), ("c", "c1"), ("b", "b2")] {
            queue.push(&named(client), job).unwrap();
        }
        let small = |job: &&str| !job.ends_with("big");
        assert_eq!(queue.pop_other(&named("a"), small), Some("c1"));
        assert_eq!(queue.pop_other(&named("a"), small), None);
        assert_eq!(drain(&queue), ["b-big", "b2"]);
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
        assert_eq!(popped, [(named("a"), "a1"), (named("b"), "b1")]);
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
