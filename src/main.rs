//! The `robust-ssl` binary: parse, dispatch to the library, report errors with their context.
use clap::Parser;

fn main() {
    let cli = robust_ssl::commands::Cli::parse();
    if let Err(err) = robust_ssl::commands::run(cli) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
