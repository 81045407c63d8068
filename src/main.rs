use std::process::ExitCode;

use clap::Parser;

/// mimalloc reuses freed pages instead of returning them to the kernel, which spares
/// the page faults and zeroing that glibc's malloc causes on large tensors.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Without mimalloc, the system allocator with transparent huge pages on large blocks.
#[cfg(not(feature = "mimalloc"))]
#[global_allocator]
static GLOBAL: ulmfit::alloc::HugePageAlloc = ulmfit::alloc::HugePageAlloc;

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
