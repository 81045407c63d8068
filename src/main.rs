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
    restore_sigpipe();
    let cli = ulmfit::cli::Cli::parse();
    ulmfit::cli::init_logging(cli.verbose, cli.quiet);
    match ulmfit::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stops early, such as `head`, closes the pipe. That ends the output
        // as intended, so it is not reported; the status is that of a SIGPIPE death.
        Err(error) if is_broken_pipe(&error) => ExitCode::from(141),
        Err(error) => {
            eprintln!("error: {}", ulmfit::cli::describe_error(&error));
            ExitCode::FAILURE
        }
    }
}

/// Returns whether `error` comes from writing to a closed pipe.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Restores the default action of SIGPIPE, which the Rust runtime ignores. Writing to a
/// pipe whose reader has gone, as in `ulmfit tokenize ... | head`, then ends the process
/// quietly by that signal (status 141 in a shell), as it ends other command-line tools.
/// With the signal ignored, `println!` would panic instead.
#[cfg(target_os = "linux")]
fn restore_sigpipe() {
    // SAFETY: called first in `main`, before any other thread exists; SIG_DFL is a valid
    // action for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(target_os = "linux"))]
fn restore_sigpipe() {}
