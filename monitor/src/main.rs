//! The `segwatch` command line: one module per subcommand under `cmd/`.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = match segwatch::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return segwatch::cli::usage_error(e),
    };
    let result = segwatch::cli::init_tracing(cli.log_level.as_deref())
        .and_then(|()| segwatch::cli::dispatch(cli));
    match result {
        Ok(code) => code,
        Err(err) => {
            // One line a user can act on: the chain of contexts, outermost first.
            eprintln!("segwatch: {}", segwatch::cli::one_line(&format!("{err:#}")));
            std::process::ExitCode::FAILURE
        }
    }
}
