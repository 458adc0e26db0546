//! The `msclip` command line.

mod cli;

use clap::Parser;

/// mimalloc, kept from purging freed pages (`msclip::allocator`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    msclip::allocator::keep_freed_pages();
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
