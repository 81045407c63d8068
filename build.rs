//! Compiles the CUDA kernels under `src/kernels/cuda/` to PTX when the `cuda` feature is
//! on. Without the feature it does nothing, so a plain build never needs nvcc.
//!
//! Each `NAME.cu` becomes `$OUT_DIR/NAME.sm_90.ptx` and `$OUT_DIR/NAME.sm_80.ptx`, which
//! `src/kernels/cuda/mod.rs` embeds with `include_str!`. nvcc is `$NVCC`, else
//! `$CUDA_ROOT/bin/nvcc` (or `CUDA_PATH`, `CUDA_HOME`), else `nvcc` on the `PATH`;
//! `scripts/cuda-env.sh` installs one and sets these variables.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The kernel sources, without the `.cu` extension.
const KERNELS: [&str; 3] = ["lstm_cell", "dropout", "pooling"];

/// The GPU architectures the PTX is written for (A100 and H100/H200).
const ARCHITECTURES: [&str; 2] = ["sm_90", "sm_80"];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CARGO_FEATURE_CUDA");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    for variable in ["NVCC", "CUDA_ROOT", "CUDA_PATH", "CUDA_HOME", "PATH"] {
        println!("cargo::rerun-if-env-changed={variable}");
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = find_nvcc();
    for kernel in KERNELS {
        let source = Path::new("src/kernels/cuda").join(format!("{kernel}.cu"));
        println!("cargo::rerun-if-changed={}", source.display());
        for arch in ARCHITECTURES {
            let target = out_dir.join(format!("{kernel}.{arch}.ptx"));
            compile(&nvcc, &source, arch, &target);
        }
    }
}

/// Returns the nvcc to run.
fn find_nvcc() -> PathBuf {
    if let Some(nvcc) = env::var_os("NVCC") {
        return PathBuf::from(nvcc);
    }
    for variable in ["CUDA_ROOT", "CUDA_PATH", "CUDA_HOME"] {
        if let Some(root) = env::var_os(variable) {
            let candidate = Path::new(&root).join("bin").join("nvcc");
            if candidate.exists() {
                return candidate;
            }
        }
    }
    PathBuf::from("nvcc")
}

/// Compiles one source to PTX for one architecture, or stops the build with nvcc's
/// message and what to do.
fn compile(nvcc: &Path, source: &Path, arch: &str, target: &Path) {
    let output = Command::new(nvcc)
        .arg("--ptx")
        .arg(format!("-arch={arch}"))
        .arg("-O3")
        .arg("-o")
        .arg(target)
        .arg(source)
        .output();
    match output {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "nvcc failed to compile {} for {arch} ({}):\n{}{}",
            source.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => panic!(
            "cannot run {} ({error}); the cuda feature needs nvcc: run `source scripts/cuda-env.sh` or set NVCC or CUDA_ROOT",
            nvcc.display()
        ),
    }
}
