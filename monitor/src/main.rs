//! The `segwatch` command line: one module per subcommand under `cmd/`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = segwatch::cli::Cli::parse();
    segwatch::cli::init_tracing(cli.log_level.as_deref());
    match segwatch::cli::dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            // One line a user can act on: the chain of contexts, outermost first.
            eprintln!("segwatch: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
