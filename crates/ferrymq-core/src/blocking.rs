//! Running a blocking file operation wherever the caller is. On a worker of tokio's
//! multi-threaded runtime (a connection's task), the worker's other tasks are handed to
//! another thread first (`block_in_place`), so a slow disk stalls only the caller and not
//! every connection that happens to share its worker; elsewhere (the timer thread, plain
//! threads in tests, a current-thread runtime) it simply runs.
//!
//! The hand-over costs a thread wake-up, so this is for operations that are rare and may be
//! slow (reading a batch of paged messages back), not for the per-message append.

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `f`, letting the runtime schedule the caller's neighbours elsewhere meanwhile.
pub fn run<T>(f: impl FnOnce() -> T) -> T {
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_on_plain_threads_and_in_both_runtime_flavors() {
        assert_eq!(super::run(|| 1), 1);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(async { super::run(|| 2) }), 2);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let v = rt.block_on(async { tokio::spawn(async { super::run(|| 3) }).await.unwrap() });
        assert_eq!(v, 3);
    }
}
