//! Allocator settings for the binaries (the command line and the CPU benchmarks), which
//! declare mimalloc as their global allocator: the autograd allocates a fresh buffer per op,
//! and with the system allocator a training step spent about a sixth of its time in page
//! faults.

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (the v3 header libmimalloc-sys 0.1.49
/// builds; the crate names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed pages for reuse. By default mimalloc hands pages unused for a second back to
/// the OS; a CPU step of about 0.5 s frees and reallocates the same sizes every step, so its
/// pages were handed back and faulted in again: perf put the kernel's page clearing at 18% of
/// a `tiny` step, 10% with purging off (2026-12-04, AMD EPYC VM). Call first thing in `main`.
pub fn keep_freed_pages() {
    // SAFETY: sets an integer option; -1 means "never purge", a value mimalloc documents.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
