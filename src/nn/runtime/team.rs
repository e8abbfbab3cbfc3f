//! A team of threads that stays awake for one eval pass whose layers split their
//! work between threads (a batch smaller than the thread count).
//!
//! A rayon fork-join after a serial stretch of a few tens of microseconds pays for
//! waking a sleeping worker: on a 2-core VM, a join of two 20 µs halves took 58 µs
//! after 20 µs of serial work and 100 µs after 200 µs, slower than running both
//! halves on one thread. A pass of one image runs a hundred layers of 50 to 500 µs,
//! each with such a stretch (padding, packing) before its parallel part, so its
//! second thread gained nothing. The team's workers spin between the layers'
//! parallel parts instead, and take the indices of each part from one atomic word,
//! the calling thread from the front and the workers from the back: each thread
//! keeps one contiguous range of a part, the same from layer to layer when the
//! layers split alike.
//!
//! The workers are threads of their own, kept between passes: a pass of a small
//! network (ResNet-20 at batch 1, half a millisecond) cannot wait for a thread to
//! start or wake. A worker with nothing to do spins for a while (longer while a pass
//! holds its team, [`LEASED_SPIN`], than after, [`IDLE_SPIN`]) and then parks until
//! the next job, so an idle team costs no CPU.
//!
//! While a team is active on a thread, parallel products through faer run on that
//! thread alone ([`active`]): a team's threads are busy with the team.

// Sharing a job's task with the workers erases its lifetime (`run` waits for every
// index before the task dies); the crate denies `unsafe` elsewhere but in the kernels.
#![allow(unsafe_code)]

use std::any::Any;
use std::cell::{Cell, UnsafeCell};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Bits of the state word: the job's number, the end and the start of the indices
/// left.
const EPOCH_BITS: u32 = 24;
const BACK_BITS: u32 = 20;
const FRONT_BITS: u32 = 20;

/// Jobs of more indices than this run on rayon instead.
const MAX_COUNT: usize = (1 << BACK_BITS) - 1;

/// How long an idle worker spins before it parks, while a pass holds its team: the
/// gaps between a pass's parallel parts are shorter.
const LEASED_SPIN: Duration = Duration::from_millis(2);

/// How long an idle worker spins before it parks once the pass has ended: long
/// enough for the next pass of a loop to find it awake, short enough to leave the
/// core to other work soon.
const IDLE_SPIN: Duration = Duration::from_micros(300);

/// Teams not held by a pass, kept for the next one.
static IDLE: Mutex<Vec<&'static Team>> = Mutex::new(Vec::new());

/// The team's shared state.
struct Team {
    /// `epoch · 2^40 + back · 2^20 + front`: the current job and the indices
    /// `front..back` of it not taken yet. The leader takes the front one, a worker
    /// the back one, by a compare-and-swap of the whole word, so no thread takes an
    /// index of a job other than the one it read.
    state: AtomicU64,
    /// The current job's task. Written by the leading thread only between jobs
    /// (after every index of the last one is done, before the next is published);
    /// read by a thread only after it took an index of the job.
    task: UnsafeCell<Option<&'static (dyn Fn(usize) + Sync)>>,
    /// Indices of the current job finished.
    done: AtomicUsize,
    /// The first panic of a task of the current job, re-raised by the leader.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// The job number the leader published last.
    epoch: AtomicU64,
    /// Whether a pass holds the team (its workers then spin longer).
    leased: AtomicBool,
    /// Workers parked or about to park: the leader wakes them with the next job.
    sleepers: AtomicUsize,
    /// The worker threads, to unpark.
    workers: OnceLock<Vec<Thread>>,
}

// SAFETY: `task` is written only while no other thread reads it (see its doc).
unsafe impl Sync for Team {}

thread_local! {
    /// The team this thread works for, if any, and whether it leads it.
    static TEAM: Cell<Option<(&'static Team, bool)>> = const { Cell::new(None) };
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
    /// A team of `workers` threads besides its leader, started and leased; `None`
    /// when the system would not start a thread.
    fn start(workers: usize) -> Option<&'static Team> {
        let team: &'static Team = Box::leak(Box::new(Team {
            state: AtomicU64::new(0),
            task: UnsafeCell::new(None),
            done: AtomicUsize::new(0),
            panic: Mutex::new(None),
            epoch: AtomicU64::new(0),
            leased: AtomicBool::new(true),
            sleepers: AtomicUsize::new(0),
            workers: OnceLock::new(),
        }));
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers {
            let spawned = std::thread::Builder::new()
                .name(format!("reflow-team-{i}"))
                .spawn(move || team.work());
            // A team whose threads did not all start is never used (its workers
            // park for good); the pass runs without one.
            threads.push(spawned.ok()?.thread().clone());
        }
        team.workers.set(threads).ok();
        Some(team)
    }

    /// Whether the current job has indices left.
    fn has_work(&self) -> bool {
        let (front, back) = unpack(self.state.load(Ordering::SeqCst));
        front < back
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
            // SAFETY: an index of the job is taken and not done, so the leader is
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

    /// A worker's life: take indices, spin a while when there are none, then park
    /// until the leader publishes a job.
    fn work(&'static self) {
        TEAM.with(|t| t.set(Some((self, false))));
        // Since when the worker has found nothing to take (the clock read every 64
        // spins only).
        let mut idle: Option<Instant> = None;
        let mut spins = 0u32;
        loop {
            if self.take_one(false) {
                idle = None;
                continue;
            }
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) {
                continue;
            }
            let since = *idle.get_or_insert_with(Instant::now);
            let patience = match self.leased.load(Ordering::Relaxed) {
                true => LEASED_SPIN,
                false => IDLE_SPIN,
            };
            if since.elapsed() < patience {
                continue;
            }
            // Announce the nap, then look once more: a job published before the
            // announcement is seen here, one published after it unparks this thread
            // (an unpark before the park makes the park return at once).
            self.sleepers.fetch_add(1, Ordering::SeqCst);
            if !self.has_work() {
                std::thread::park();
            }
            self.sleepers.fetch_sub(1, Ordering::SeqCst);
            idle = None;
        }
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
        let epoch = (self.epoch.load(Ordering::Relaxed) + 1) & ((1 << EPOCH_BITS) - 1);
        self.epoch.store(epoch, Ordering::Relaxed);
        self.state.store(pack(epoch, 0, count), Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            for worker in self.workers.get().into_iter().flatten() {
                worker.unpark();
            }
        }
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

    fn size(&self) -> usize {
        self.workers.get().map_or(0, Vec::len) + 1
    }
}

/// Runs `f` with a team of `threads` threads (the calling one and `threads − 1`
/// workers) awake for [`each`] to split work between; `f` alone when `threads < 2`,
/// a team is active on this thread already, or no thread could be started.
pub(crate) fn with_team<R>(threads: usize, f: impl FnOnce() -> R) -> R {
    if threads < 2 || active() {
        return f();
    }
    let kept = {
        let mut idle = IDLE.lock().unwrap_or_else(|p| p.into_inner());
        let found = idle.iter().position(|t| t.size() == threads);
        found.map(|i| idle.swap_remove(i))
    };
    let Some(team) = kept.or_else(|| Team::start(threads - 1)) else {
        return f();
    };
    team.leased.store(true, Ordering::Relaxed);
    /// Gives the team back when `f` returns or unwinds (no job is running then:
    /// `run` waits for its job to end before it returns or re-raises a panic).
    struct Lead(&'static Team);
    impl Drop for Lead {
        fn drop(&mut self) {
            TEAM.with(|t| t.set(None));
            self.0.leased.store(false, Ordering::Relaxed);
            IDLE.lock().unwrap_or_else(|p| p.into_inner()).push(self.0);
        }
    }
    TEAM.with(|t| t.set(Some((team, true))));
    let _lead = Lead(team);
    f()
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
            team.run(count, task);
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

    #[test]
    fn a_parked_worker_wakes_for_the_next_job() {
        // Each job's two indices wait for each other: the leader takes index 0, so
        // only a worker can take index 1, and it must be awake to.
        let both = |started: &AtomicUsize| {
            started.fetch_add(1, Ordering::SeqCst);
            let since = Instant::now();
            while started.load(Ordering::SeqCst) < 2 {
                assert!(since.elapsed() < Duration::from_secs(10), "no worker came");
                std::hint::spin_loop();
            }
        };
        for pass in 0..2 {
            with_team(2, || {
                for _ in 0..2 {
                    // Longer than a worker spins: it parks before the job.
                    std::thread::sleep(LEASED_SPIN * 3);
                    let started = AtomicUsize::new(0);
                    assert!(each(2, &|_| both(&started)));
                }
            });
            assert!(!active(), "pass {pass}");
        }
    }
}
