//! The `robust-ssl` binary: parse, dispatch to the library, report errors with their context.
use clap::Parser;

mod commands;

// candle allocates a fresh buffer for every op; with the system allocator much of the time went
// into the kernel zeroing new pages. mimalloc with purging off keeps freed pages for reuse.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // mi_option_purge_delay (15 in mimalloc v2): -1 = never return freed pages to the OS.
    unsafe { libmimalloc_sys::mi_option_set(15, -1) };
    let cli = commands::Cli::parse();
    if let Err(err) = commands::run(cli) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
