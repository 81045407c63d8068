use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = ulmfit::cli::Cli::parse();
    ulmfit::cli::init_logging(cli.verbose, cli.quiet);
    match ulmfit::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", ulmfit::cli::describe_error(&error));
            ExitCode::FAILURE
        }
    }
}
