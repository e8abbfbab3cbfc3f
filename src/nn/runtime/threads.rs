//! Keeping a layer's work on the calling thread.
//!
//! Layers spread their work over rayon's threads. When the caller already runs
//! independent work on every thread (the micro-batches of an eval pass), splitting each
//! layer again only moves data between cores; inside [`serially`] the layers of
//! [`crate::nn`] run on the calling thread alone.

use std::cell::Cell;

/// How many threads one piece of work (a matrix product) may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Threads {
    /// One thread: the caller already parallelises around it.
    One,
    /// All of rayon's threads.
    All,
}

thread_local! {
    static SERIAL: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the layers' own parallelism turned off on this thread.
pub(crate) fn serially<R>(f: impl FnOnce() -> R) -> R {
    /// Restores the previous setting, also when `f` panics.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SERIAL.set(self.0);
        }
    }
    let _restore = Restore(SERIAL.replace(true));
    f()
}

/// How many threads a layer may spread its work over: 1 inside [`serially`], else
/// rayon's.
pub(crate) fn threads() -> usize {
    if SERIAL.get() {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// The threads one matrix product may use when nothing parallelises around it.
pub(crate) fn product_threads() -> Threads {
    if SERIAL.get() {
        Threads::One
    } else {
        Threads::All
    }
}
