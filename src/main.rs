use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = ulmfit::cli::Cli::parse();
    ulmfit::cli::init_logging(cli.verbose, cli.quiet);
    match ulmfit::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
