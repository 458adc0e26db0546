//! The `msclip` command line.

mod cli;

use clap::Parser;

/// mimalloc keeps freed pages for reuse: the autograd allocates a fresh buffer per op, and
/// with the system allocator a training step spent about a sixth of its time in page faults.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (the v3 header libmimalloc-sys 0.1.49
/// builds; the crate names no constant for it). By default mimalloc hands pages unused for a
/// second back to the OS; a CPU step of about 0.5 s frees and reallocates the same sizes every
/// step, so its pages were handed back and faulted in again: perf put the kernel's page
/// clearing at 18% of a `tiny` step, 10% with purging off (2026-12-04, AMD EPYC VM).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() {
    // SAFETY: sets an integer option; -1 means "never purge", a value mimalloc documents.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
