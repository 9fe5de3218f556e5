//! The JIT's own thread pool for parallel loops: workers that spin briefly between loops.
//!
//! A model runs one parallel loop per kernel, back to back, with short serial stretches between
//! them. A pool whose idle workers go to sleep at once (rayon's) pays a thread wake-up, tens of
//! microseconds on a loaded machine, per loop: as much as a small kernel's whole run. Here idle
//! workers spin for [`SPIN`] before parking, so the next loop of a run finds them awake, and the
//! calling thread takes chunks too (no hand-off to start a run).
//!
//! Invariant: [`SpinPool::parallel_for`] runs `body(ctx, begin, end)` for disjoint chunks
//! covering `0..n` exactly once and returns only after every chunk has finished (so `ctx` need
//! only live for the call); it returns the first non-zero status a chunk returned. A worker
//! claims chunks only of the loop it saw published (the claim compares the loop's epoch), so no
//! chunk ever runs with another loop's body or context. Loops submitted concurrently from two
//! threads do not share the pool: the second runs serially on its own thread.

#![allow(unsafe_code)]

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins for the next loop before it parks.
pub const SPIN: Duration = Duration::from_micros(150);

/// The signature of an outlined parallel loop body.
pub(crate) type BodyFn = unsafe extern "C" fn(ctx: *const u8, begin: i64, end: i64) -> i32;

/// Chunks per thread: enough to balance uneven chunks, few enough to claim cheaply.
const CHUNKS_PER_THREAD: i64 = 4;

#[derive(Default)]
struct Shared {
    /// `epoch << 32 | next chunk`: a claim succeeds only in the loop it was read for.
    ticket: AtomicU64,
    /// The current loop: body and context addresses, iterations, chunks.
    body: AtomicUsize,
    ctx: AtomicUsize,
    n: AtomicI64,
    chunks: AtomicI64,
    /// Chunks of the current loop finished.
    done: AtomicI64,
    status: AtomicI32,
    shutdown: AtomicBool,
    /// Parked workers, guarded by the mutex (with the condition variable they park on).
    sleepers: Mutex<usize>,
    wake: Condvar,
    /// Held while a loop runs: a concurrent loop runs serially instead.
    submit: Mutex<()>,
    threads: usize,
}

impl Shared {
    fn epoch(&self) -> u64 {
        self.ticket.load(Ordering::Acquire) >> 32
    }

    /// Claims and runs chunks of the loop of `epoch` until none is left.
    fn work(&self, epoch: u64) {
        let chunks = self.chunks.load(Ordering::Relaxed);
        let n = self.n.load(Ordering::Relaxed);
        let body = self.body.load(Ordering::Relaxed);
        let ctx = self.ctx.load(Ordering::Relaxed) as *const u8;
        let mut t = self.ticket.load(Ordering::Acquire);
        loop {
            let chunk = (t & 0xffff_ffff) as i64;
            if t >> 32 != epoch || chunk >= chunks {
                return;
            }
            match self
                .ticket
                .compare_exchange_weak(t, t + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let bound = |c: i64| (n as i128 * c as i128 / chunks as i128) as i64;
                    // SAFETY: `body` is the outlined body of the loop of `epoch` (published
                    // before the epoch, unchanged until all its chunks are done, which needs
                    // this one); `begin..end` is a non-empty sub-range of `0..n`; the caller
                    // keeps `ctx` alive until then.
                    let s = unsafe {
                        let f = std::mem::transmute::<usize, BodyFn>(body);
                        f(ctx, bound(chunk), bound(chunk + 1))
                    };
                    if s != 0 {
                        let _ = self.status.compare_exchange(
                            0,
                            s,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                    }
                    self.done.fetch_add(1, Ordering::AcqRel);
                    t = self.ticket.load(Ordering::Acquire);
                }
                Err(now) => t = now,
            }
        }
    }
}

fn worker(shared: Arc<Shared>) {
    let mut seen = 0;
    loop {
        let start = Instant::now();
        let epoch = loop {
            if shared.shutdown.load(Ordering::Acquire) {
                return;
            }
            let e = shared.epoch();
            if e != seen {
                break e;
            }
            if start.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            let Ok(mut sleepers) = shared.sleepers.lock() else {
                return;
            };
            *sleepers += 1;
            while shared.epoch() == seen && !shared.shutdown.load(Ordering::Acquire) {
                sleepers = match shared.wake.wait(sleepers) {
                    Ok(g) => g,
                    Err(_) => return,
                };
            }
            *sleepers -= 1;
        };
        seen = epoch;
        shared.work(epoch);
    }
}

/// A pool of `threads - 1` workers plus the thread that runs a loop.
pub struct SpinPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for SpinPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpinPool")
            .field("threads", &self.shared.threads)
            .finish()
    }
}

thread_local! {
    /// The pool of the [`SpinPool::install`] this thread is inside.
    static CURRENT: Cell<*const Shared> = const { Cell::new(std::ptr::null()) };
}

impl SpinPool {
    /// A pool running loops on `threads` threads (the caller's and `threads - 1` workers).
    pub fn new(threads: usize) -> std::io::Result<SpinPool> {
        let shared = Arc::new(Shared {
            threads: threads.max(1),
            ..Shared::default()
        });
        let mut workers = vec![];
        for i in 1..threads.max(1) {
            let s = Arc::clone(&shared);
            workers.push(
                std::thread::Builder::new()
                    .name(format!("kiln-worker-{i}"))
                    .spawn(move || worker(s))?,
            );
        }
        Ok(SpinPool { shared, workers })
    }

    /// Runs `f` on this thread with parallel loops ([`parallel_for`]) on this pool.
    pub fn install<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(*const Shared);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.replace(Arc::as_ptr(&self.shared))));
        f()
    }
}

impl Drop for SpinPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        if let Ok(_sleepers) = self.shared.sleepers.lock() {
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Runs `body` over `0..n` on the pool this thread is inside ([`SpinPool::install`]); `None`
/// when it is inside none.
pub(crate) fn parallel_for(body: BodyFn, ctx: *const u8, n: i64) -> Option<i32> {
    let shared = CURRENT.with(Cell::get);
    if shared.is_null() {
        return None;
    }
    // SAFETY: `install` set the pointer from an `Arc` the pool keeps alive for the duration of
    // the closure this call runs inside, and resets it on the way out.
    let shared = unsafe { &*shared };
    let Ok(_running) = shared.submit.try_lock() else {
        // SAFETY: the whole range of the loop the body was outlined for.
        return Some(unsafe { body(ctx, 0, n) });
    };
    let chunks = n.min(CHUNKS_PER_THREAD * shared.threads as i64).max(1);
    shared.body.store(body as usize, Ordering::Relaxed);
    shared.ctx.store(ctx as usize, Ordering::Relaxed);
    shared.n.store(n, Ordering::Relaxed);
    shared.chunks.store(chunks, Ordering::Relaxed);
    shared.done.store(0, Ordering::Relaxed);
    shared.status.store(0, Ordering::Relaxed);
    // Publish: the next epoch (1 to 2^32 - 1, wrapping) with chunk 0 (the release orders the
    // stores above before it).
    let epoch = shared.epoch() % 0xffff_ffff + 1;
    shared.ticket.store(epoch << 32, Ordering::Release);
    if let Ok(sleepers) = shared.sleepers.lock() {
        if *sleepers > 0 {
            shared.wake.notify_all();
        }
    }
    shared.work(epoch);
    while shared.done.load(Ordering::Acquire) < chunks {
        std::hint::spin_loop();
    }
    Some(shared.status.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ctx` points at an array of `AtomicI64` counters, one per iteration.
    unsafe extern "C" fn count(ctx: *const u8, begin: i64, end: i64) -> i32 {
        let counters = ctx as *const AtomicI64;
        for i in begin..end {
            // SAFETY: the test passes `n` counters and `0 <= i < n`.
            unsafe { (*counters.add(i as usize)).fetch_add(1, Ordering::Relaxed) };
        }
        if begin <= 37 && 37 < end {
            7
        } else {
            0
        }
    }

    fn run(pool: &SpinPool, n: usize) -> (Vec<i64>, Option<i32>) {
        let counters: Vec<AtomicI64> = (0..n).map(|_| AtomicI64::new(0)).collect();
        let status = pool.install(|| parallel_for(count, counters.as_ptr() as *const u8, n as i64));
        (
            counters.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
            status,
        )
    }

    #[test]
    fn every_iteration_runs_once_and_the_status_comes_back() {
        let pool = SpinPool::new(3).unwrap();
        for n in [1, 2, 5, 12, 37, 38, 1000] {
            for _ in 0..50 {
                let (counts, status) = run(&pool, n);
                assert!(counts.iter().all(|&c| c == 1), "n = {n}: {counts:?}");
                assert_eq!(status, Some(if n > 37 { 7 } else { 0 }));
            }
        }
    }

    #[test]
    fn parked_workers_wake_and_concurrent_loops_stay_correct() {
        let pool = SpinPool::new(2).unwrap();
        std::thread::sleep(SPIN * 4);
        assert!(run(&pool, 100).0.iter().all(|&c| c == 1));
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..200 {
                        assert!(run(&pool, 64).0.iter().all(|&c| c == 1));
                    }
                });
            }
        });
    }

    #[test]
    fn outside_a_pool_there_is_none() {
        let counters = [AtomicI64::new(0)];
        assert_eq!(parallel_for(count, counters.as_ptr() as *const u8, 1), None);
    }
}
