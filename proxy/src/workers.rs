//! Serving threads, as the rest of the crate sees them. The main listener is served by one
//! current-thread runtime per thread, each accepting on a listener of its own on the same port
//! (`SO_REUSEPORT`; see `server::serve_on_threads`). A connection never leaves the thread that
//! accepted it, and neither does what its requests open: an upstream connection is registered
//! with the runtime that opened it, so each pool keeps the idle connections of each thread
//! apart (`upstream::UpstreamPool`). This module only says which serving thread the caller is
//! on; it is a leaf.

use std::cell::Cell;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The serving thread the caller runs on, from 1; 0 on any other thread (the control runtime
/// that runs sync, admin and the authz gRPC listener, or a test's runtime).
#[inline]
pub(crate) fn current() -> usize {
    INDEX.with(Cell::get)
}

/// Marks the calling thread as serving thread `index` (from 1), for the rest of its life.
pub(crate) fn enter(index: usize) {
    INDEX.with(|cell| cell.set(index));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_thread_has_its_own_index() {
        assert_eq!(current(), 0);
        let other = std::thread::spawn(|| {
            enter(3);
            current()
        });
        assert_eq!(other.join().ok(), Some(3));
        assert_eq!(current(), 0, "another thread's index is its own");
    }
}
