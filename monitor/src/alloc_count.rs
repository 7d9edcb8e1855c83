//! Test-only global allocator that counts the bytes live on the calling
//! thread, so a test can measure what a structure holds per flow without
//! timing anything. Each test runs on its own thread: counts of tests
//! running in parallel do not mix.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    /// Bytes allocated minus bytes freed by this thread. Memory freed by
    /// another thread than the one that allocated it shows on the freeing
    /// thread; the tests that measure allocate and free on one thread.
    static LIVE: Cell<i64> = const { Cell::new(0) };
    /// The highest `LIVE` since [`reset_peak`].
    static PEAK: Cell<i64> = const { Cell::new(0) };
}

fn add(n: i64) {
    // `try_with`: during thread teardown the slots may be gone already.
    if let Ok(live) = LIVE.try_with(|l| {
        l.set(l.get() + n);
        l.get()
    }) {
        let _ = PEAK.try_with(|p| p.set(p.get().max(live)));
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counting touches a const-initialised thread-local `Cell` (no allocation,
// no destructor), so it cannot recurse into the allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(layout.size() as i64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size() as i64);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        add(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            add(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Bytes live on this thread now (allocated here and not yet freed).
pub fn live() -> i64 {
    LIVE.with(Cell::get)
}

/// The most bytes live on this thread since the last [`reset_peak`].
pub fn peak() -> i64 {
    PEAK.with(Cell::get)
}

/// Starts measuring [`peak`] from what is live now.
pub fn reset_peak() {
    PEAK.with(|p| p.set(live()));
}
