//! A team of threads that stays awake for one eval pass whose layers split their
//! work between threads (a batch smaller than the thread count).
//!
//! A rayon fork-join after a serial stretch of a few tens of microseconds pays for
//! waking a sleeping worker: on a 2-core VM, a join of two 20 µs halves took 58 µs
//! after 20 µs of serial work and 100 µs after 200 µs, slower than running both
//! halves on one thread. A pass of one image runs a hundred layers of 50 to 500 µs,
//! each with such a stretch (padding, packing) before its parallel part, so its
//! second thread gained nothing. The team's workers spin between the layers'
//! parallel parts instead (yielding when they have spun for a while), and take the
//! indices of each part from one atomic word, the calling thread from the front and
//! the workers from the back: each thread keeps one contiguous range of a part, the
//! same from layer to layer when the layers split alike.
//!
//! While a team is active on a thread, parallel products through faer run on that
//! thread alone ([`active`]): faer's own threads are rayon's, which the team holds.

// Sharing a job's task with the workers erases its lifetime (`run` waits for every
// index before the task dies); the crate denies `unsafe` elsewhere but in the kernels.
#![allow(unsafe_code)]

use std::any::Any;
use std::cell::{Cell, UnsafeCell};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Bits of the state word: the job's number, the end and the start of the indices
/// left.
const EPOCH_BITS: u32 = 24;
const BACK_BITS: u32 = 20;
const FRONT_BITS: u32 = 20;

/// Jobs of more indices than this run on rayon instead.
const MAX_COUNT: usize = (1 << BACK_BITS) - 1;

/// Spins of an idle worker before it starts yielding its core between spins.
const SPINS_BEFORE_YIELD: u32 = 1 << 14;

/// The team's shared state.
struct Team {
    /// `epoch · 2^40 + back · 2^20 + front`: the current job and the indices
    /// `front..back` of it not taken yet. The leader takes the front one, a worker
    /// the back one, by a compare-and-swap of the whole word, so no thread takes an
    /// index of a job other than the one it read.
    state: AtomicU64,
    /// The current job's task. Written by the calling thread only between jobs
    /// (after every index of the last one is done, before the next is published);
    /// read by a thread only after it took an index of the job.
    task: UnsafeCell<Option<&'static (dyn Fn(usize) + Sync)>>,
    /// Indices of the current job finished.
    done: AtomicUsize,
    /// The first panic of a task of the current job, re-raised by the caller.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    stop: AtomicBool,
}

// SAFETY: `task` is written only while no other thread reads it (see its doc).
unsafe impl Sync for Team {}

thread_local! {
    /// The team this thread works for, if any, and whether it leads it.
    static TEAM: Cell<Option<(*const Team, bool)>> = const { Cell::new(None) };
    /// The job number the leading thread published last.
    static EPOCH: Cell<u64> = const { Cell::new(0) };
}

/// The state word of job `epoch` with indices `front..back` left.
fn pack(epoch: u64, front: usize, back: usize) -> u64 {
    (epoch << (BACK_BITS + FRONT_BITS)) | ((back as u64) << FRONT_BITS) | front as u64
}

/// The indices `front..back` a state word has left.
fn unpack(state: u64) -> (usize, usize) {
    let back = (state >> FRONT_BITS) as usize & MAX_COUNT;
    let front = state as usize & ((1 << FRONT_BITS) - 1);
    (front, back)
}

impl Team {
    fn new() -> Self {
        Team {
            state: AtomicU64::new(0),
            task: UnsafeCell::new(None),
            done: AtomicUsize::new(0),
            panic: Mutex::new(None),
            stop: AtomicBool::new(false),
        }
    }

    /// Takes and runs one index of the current job, the first one left (the leader)
    /// or the last (a worker); `false` when none is left. Taking from both ends keeps
    /// each thread on one contiguous range of a job when the work is even (the same
    /// rows of a map in consecutive layers: what a thread writes, it reads next).
    fn take_one(&self, lead: bool) -> bool {
        let state = self.state.load(Ordering::Acquire);
        let (front, back) = unpack(state);
        if front >= back {
            return false;
        }
        let (index, taken) = match lead {
            true => (front, state + 1),
            false => (back - 1, state - (1 << FRONT_BITS)),
        };
        let taken =
            self.state
                .compare_exchange_weak(state, taken, Ordering::AcqRel, Ordering::Relaxed);
        if taken.is_ok() {
            // SAFETY: an index of the job is taken and not done, so the caller is
            // inside `run` for this job: `task` is its task, alive and unchanged.
            let task = unsafe { (*self.task.get()).expect("a job has a task") };
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| task(index))) {
                let mut panic = self.panic.lock().unwrap_or_else(|p| p.into_inner());
                panic.get_or_insert(payload);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
        true
    }

    /// A worker's life: take indices while the pass lasts.
    fn work(&self) {
        let previous = TEAM.with(|t| t.replace(Some((self as *const Team, false))));
        let mut idle = 0u32;
        while !self.stop.load(Ordering::Acquire) {
            if self.take_one(false) {
                idle = 0;
                continue;
            }
            idle = idle.saturating_add(1);
            if idle < SPINS_BEFORE_YIELD {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        TEAM.with(|t| t.set(previous));
    }

    /// Runs `task(i)` for every `i < count` on the team, the calling thread (the
    /// leader) with it, and returns when all are done.
    fn run(&self, count: usize, task: &(dyn Fn(usize) + Sync)) {
        debug_assert!(count <= MAX_COUNT);
        self.done.store(0, Ordering::Relaxed);
        // SAFETY: the last job's indices are all done (the last `run` waited for
        // them), so no thread reads `task` until the job below is published; it is
        // cleared before this function returns, while `task` is still alive.
        unsafe {
            *self.task.get() = Some(std::mem::transmute::<
                &(dyn Fn(usize) + Sync),
                &'static (dyn Fn(usize) + Sync),
            >(task));
        }
        let epoch = EPOCH.with(|e| {
            let next = (e.get() + 1) & ((1 << EPOCH_BITS) - 1);
            e.set(next);
            next
        });
        self.state.store(pack(epoch, 0, count), Ordering::Release);
        while self.take_one(true) {}
        while self.done.load(Ordering::Acquire) < count {
            std::hint::spin_loop();
        }
        // SAFETY: every index is taken and done: nobody reads `task` any more.
        unsafe { *self.task.get() = None };
        let panic = self.panic.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(payload) = panic {
            resume_unwind(payload);
        }
    }
}

/// Runs `f` with a team of `threads` threads (the calling one and `threads − 1` of
/// rayon's) awake for [`each`] to split work between; `f` alone when `threads < 2`
/// or a team is active on this thread already.
pub(crate) fn with_team<R>(threads: usize, f: impl FnOnce() -> R) -> R {
    if threads < 2 || active() {
        return f();
    }
    let team = Team::new();
    let team = &team;
    rayon::in_place_scope(|scope| {
        for _ in 1..threads {
            scope.spawn(move |_| team.work());
        }
        /// Ends the team when `f` returns or unwinds.
        struct Lead<'t>(&'t Team);
        impl Drop for Lead<'_> {
            fn drop(&mut self) {
                self.0.stop.store(true, Ordering::Release);
                TEAM.with(|t| t.set(None));
            }
        }
        TEAM.with(|t| t.set(Some((team as *const Team, true))));
        let _lead = Lead(team);
        f()
    })
}

/// Whether this thread leads or works for a team.
pub(crate) fn active() -> bool {
    TEAM.with(|t| t.get().is_some())
}

/// Whether [`each`] would run a job of `count` indices on a team: this thread leads
/// one (a worker inside a task runs its nested work itself) and the job is not too
/// large for it.
pub(crate) fn leads(count: usize) -> bool {
    count <= MAX_COUNT && TEAM.with(|t| t.get()).is_some_and(|(_, leads)| leads)
}

/// Runs `task(i)` for every `i < count` on the team this thread leads, and returns
/// `true`; `false` (nothing run) when [`leads`] says no.
pub(crate) fn each(count: usize, task: &(dyn Fn(usize) + Sync)) -> bool {
    match TEAM.with(|t| t.get()) {
        Some((team, true)) if count <= MAX_COUNT => {
            // SAFETY: the team lives as long as `with_team`'s closure, inside which
            // this thread leads it.
            unsafe { &*team }.run(count, task);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_index_runs_once_on_the_team() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| {
            with_team(3, || {
                for count in [0, 1, 2, 7, 1000] {
                    let hits: Vec<AtomicUsize> = (0..count).map(|_| AtomicUsize::new(0)).collect();
                    assert!(each(count, &|i| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    }));
                    assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                }
            });
        });
        assert!(!active());
    }

    #[test]
    fn a_panicking_task_reaches_the_leader_after_the_job_ends() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let ran = AtomicUsize::new(0);
        let caught = pool.install(|| {
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                with_team(2, || {
                    each(64, &|i| {
                        ran.fetch_add(1, Ordering::Relaxed);
                        assert!(i != 40, "task 40 fails");
                    })
                })
            }))
        });
        assert!(caught.is_err());
        // Every other index still ran: the job ended before the panic went on.
        assert_eq!(ran.load(Ordering::Relaxed), 64);
        assert!(!active());
    }
}
