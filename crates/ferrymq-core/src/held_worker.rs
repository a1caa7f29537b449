//! One thread for the whole process that runs at-least-once dead-letter forwarding rounds
//! the timer thread asks for.
//!
//! A retry round offers up to 1,024 held letters to their targets, reading each one's record
//! back from disk first (held letters of a quorum queue on a data dir keep only their
//! position in RAM). Run on the timer thread (`timers.rs`), that would delay every other
//! queue's expiries and wake-ups for as long as the disk takes; here it delays only other
//! queues' rounds. Core has no runtime handle of its own (the timer thread and the tests
//! run without one), hence a plain thread rather than `spawn_blocking`. Each queue submits
//! at most one job at a time (`Held::worker_queued` in `queue.rs`), so a queue never has two
//! rounds running, and the single thread runs jobs one after the other in submission order.

use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::OnceLock;

type Job = Box<dyn FnOnce() + Send>;

struct Worker {
    jobs: Mutex<VecDeque<Job>>,
    wake: Condvar,
}

fn worker() -> Option<&'static Worker> {
    static W: OnceLock<Option<&'static Worker>> = OnceLock::new();
    *W.get_or_init(|| {
        let w: &'static Worker = Box::leak(Box::new(Worker {
            jobs: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
        }));
        let spawned = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || run(w));
        match spawned {
            Ok(_) => Some(w),
            Err(e) => {
                // Jobs then run on the caller's thread: slower timers, but no letter stuck.
                tracing::error!("cannot start the dead-letter thread: {e}");
                None
            }
        }
    })
}

/// The worker thread's name (tests check that rounds run there).
pub const THREAD_NAME: &str = "ferrymq-dead-letters";

/// Runs `job` on the dead-letter thread, after the jobs submitted before it.
pub fn submit(job: impl FnOnce() + Send + 'static) {
    match worker() {
        Some(w) => {
            w.jobs.lock().push_back(Box::new(job));
            w.wake.notify_one();
        }
        None => job(),
    }
}

fn run(w: &'static Worker) {
    loop {
        let job = {
            let mut jobs = w.jobs.lock();
            loop {
                if let Some(j) = jobs.pop_front() {
                    break j;
                }
                w.wake.wait(&mut jobs);
            }
        };
        // A job that panics must not take the thread (and every later round) with it.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
            tracing::error!("a dead-letter forwarding round panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn jobs_run_in_order_on_the_worker_thread() {
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..3 {
            let tx = tx.clone();
            super::submit(move || {
                let name = std::thread::current().name().map(str::to_string);
                let _ = tx.send((i, name));
            });
        }
        let got: Vec<_> = (0..3)
            .map(|_| rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap())
            .collect();
        let want: Vec<_> = (0..3)
            .map(|i| (i, Some(super::THREAD_NAME.to_string())))
            .collect();
        assert_eq!(got, want);
    }
}
