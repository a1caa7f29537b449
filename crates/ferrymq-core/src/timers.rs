//! One timer thread for the whole process: queues and delayed exchanges ask to be woken at an
//! instant, and keep their own per-message deadlines.
//!
//! A queue with a million messages of distinct TTLs holds a million deadlines in its own
//! heap but at most one entry here (its earliest), so timers cost neither a thread nor a task
//! per message. Wake-ups are hints: a target woken early or twice just finds nothing due.

use parking_lot::{Condvar, Mutex};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

/// Something that wants to run at a given time.
pub trait Timed: Send + Sync {
    /// Called on the timer thread at (or just after) a requested instant. Must not block for
    /// long: every other timer in the process waits meanwhile.
    fn on_timer(self: Arc<Self>, now: Instant);
}

struct Entry {
    at: Instant,
    id: u64,
    target: Weak<dyn Timed>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.id) == (other.at, other.id)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap and the earliest must come out first.
        (other.at, other.id).cmp(&(self.at, self.id))
    }
}

#[derive(Default)]
struct State {
    heap: BinaryHeap<Entry>,
    next_id: u64,
}

struct Timers {
    state: Mutex<State>,
    wake: Condvar,
}

fn timers() -> &'static Timers {
    static T: OnceLock<&'static Timers> = OnceLock::new();
    T.get_or_init(|| {
        let t: &'static Timers = Box::leak(Box::new(Timers {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        }));
        let spawned = std::thread::Builder::new()
            .name("ferrymq-timers".into())
            .spawn(move || run(t));
        if let Err(e) = spawned {
            // Without the thread nothing expires on time; deliveries still check deadlines.
            tracing::error!("cannot start the timer thread: {e}");
        }
        t
    })
}

/// Asks for `target.on_timer` to be called at `at`.
pub fn schedule(at: Instant, target: Weak<dyn Timed>) {
    let t = timers();
    let mut st = t.state.lock();
    st.next_id += 1;
    let id = st.next_id;
    let earliest = st.heap.peek().is_none_or(|e| at < e.at);
    st.heap.push(Entry { at, id, target });
    if earliest {
        t.wake.notify_one();
    }
}

fn run(t: &'static Timers) {
    let mut due = Vec::new();
    loop {
        {
            let mut st = t.state.lock();
            loop {
                let now = Instant::now();
                while st.heap.peek().is_some_and(|e| e.at <= now) {
                    if let Some(e) = st.heap.pop() {
                        due.push(e.target);
                    }
                }
                if !due.is_empty() {
                    break;
                }
                match st.heap.peek().map(|e| e.at) {
                    Some(at) => {
                        t.wake.wait_until(&mut st, at);
                    }
                    None => t.wake.wait(&mut st),
                }
            }
        }
        let now = Instant::now();
        for w in due.drain(..) {
            if let Some(target) = w.upgrade() {
                target.on_timer(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering as AtOrd};
    use std::time::Duration;

    struct Counter(AtomicUsize, Instant);
    impl Timed for Counter {
        fn on_timer(self: Arc<Self>, now: Instant) {
            assert!(now >= self.1);
            self.0.fetch_add(1, AtOrd::SeqCst);
        }
    }

    #[test]
    fn fires_after_the_requested_instant_and_skips_dropped_targets() {
        let at = Instant::now() + Duration::from_millis(20);
        let c = Arc::new(Counter(AtomicUsize::new(0), at));
        let w: Weak<dyn Timed> = Arc::downgrade(&c) as Weak<dyn Timed>;
        schedule(at, w);
        let gone = Arc::new(Counter(AtomicUsize::new(0), at));
        schedule(at, Arc::downgrade(&gone) as Weak<dyn Timed>);
        drop(gone);
        for _ in 0..500 {
            if c.0.load(AtOrd::SeqCst) == 1 {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("timer never fired");
    }
}
