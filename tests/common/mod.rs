//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::path::PathBuf;

/// Returns the folder with the shared test data and fixtures: `$ULMFIT_SHARED` when set,
/// else `../shared` beside the crate. Returns `None`, after printing why the calling test
/// is skipped, when the folder does not exist.
pub fn shared_dir(test: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os("ULMFIT_SHARED") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    };
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "skipped {test}: shared data folder {} not found (set ULMFIT_SHARED)",
            dir.display()
        );
        None
    }
}
