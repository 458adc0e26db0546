//! The `msclip` command line.

mod cli;

use clap::Parser;

/// mimalloc keeps freed pages for reuse: the autograd allocates a fresh buffer per op, and
/// with the system allocator a training step spent about a sixth of its time in page faults.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
