#!/usr/bin/env bash
# GPU check of the CUDA kernels, in two halves.
#
#   scripts/gpu-check.sh build   (here, no GPU needed) builds the `cuda_twins` test
#                                binary with `--features cuda`, strips it and puts it in
#                                target/gpu-bin/, which must stay under 64 MiB to be carried.
#   scripts/gpu-check.sh run     (on the GPU machine; no Rust there, Python with PyTorch)
#                                runs every kernel against its CPU twin on random inputs
#                                (relative error at most 1e-5), times an LSTM stack of the
#                                wt103 sizes built on the kernels, times PyTorch's cuDNN
#                                LSTM (scripts/torch-lstm-bench.py), and prints a table.
#
# NOTE: the run half has not run on a GPU machine yet. The binary loads libcuda.so.1 from
# the driver and libcublas.so.13, libcurand.so.10 and libcudart.so.13 (CUDA 13) from the
# Python environment's nvidia wheels; a PyTorch built for CUDA 12 does not provide them.
#
# `ulmfit bench lm --preset wt103` has no --device option yet and the model's fused LSTM
# operation runs on the CPU only, so the whole-model GPU timing comes from PyTorch alone.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN_DIR="${ULMFIT_GPU_BIN:-target/gpu-bin}"
RESULTS="${OUT:-/tmp}/gpu-check"

# Writes link-time stubs of the CUDA libraries that Candle's cudarc links dynamically
# (driver, NVRTC, cuRAND, cuBLAS, cuBLASLt) into $CUDA_ROOT/lib/stubs, which cudarc's
# build script adds to the search path. The stubs define every function that cudarc's
# bindings declare, so the binary links here. At run time the loader finds the real
# libraries by the same sonames. The sonames are those of CUDA 13.0.
write_link_stubs() {
    local cudarc stubs="$CUDA_ROOT/lib/stubs"
    cudarc="$(cargo metadata --format-version 1 --features cuda \
        | python3 -c 'import json, sys
for package in json.load(sys.stdin)["packages"]:
    if package["name"] == "cudarc":
        print(package["manifest_path"].rsplit("/", 1)[0])')"
    if [ -z "$cudarc" ]; then
        echo "gpu-check: cudarc not found in the dependency graph of --features cuda" >&2
        exit 1
    fi
    mkdir -p "$stubs"
    local entry module library soname
    for entry in driver:cuda:libcuda.so.1 nvrtc:nvrtc:libnvrtc.so.13 curand:curand:libcurand.so.10 \
        cublas:cublas:libcublas.so.13 cublaslt:cublasLt:libcublasLt.so.13; do
        IFS=: read -r module library soname <<<"$entry"
        grep -ohE '^pub unsafe fn [A-Za-z0-9_]+' "$cudarc"/src/"$module"/sys/*.rs \
            | sort -u | sed -E 's/^pub unsafe fn (.*)$/void \1(void) {}/' >"$stubs/$library.c"
        cc -shared -fPIC -Wl,-soname,"$soname" -o "$stubs/lib$library.so" "$stubs/$library.c"
    done
    # Candle's compiled kernels link the CUDA runtime, which the wheel ships only as
    # libcudart.so.13.
    ln -sf ../libcudart.so.13 "$stubs/libcudart.so"
}

build() {
    # shellcheck source=scripts/cuda-env.sh
    source scripts/cuda-env.sh
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-cuda}"
    write_link_stubs
    local binary
    binary="$(cargo test --release --features cuda --test cuda_twins --no-run --message-format=json \
        | python3 -c 'import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("reason") == "compiler-artifact" and message["target"]["name"] == "cuda_twins" and message.get("executable"):
        print(message["executable"])')"
    mkdir -p "$BIN_DIR"
    cp "$binary" "$BIN_DIR/cuda_twins"
    strip "$BIN_DIR/cuda_twins"
    local size
    size="$(stat -c %s "$BIN_DIR/cuda_twins")"
    echo "gpu-check: $BIN_DIR/cuda_twins is $((size / 1024 / 1024)) MiB"
    if [ "$size" -ge $((64 * 1024 * 1024)) ]; then
        echo "gpu-check: the binary is over the 64 MiB that can be carried" >&2
        exit 1
    fi
}

# Adds the CUDA libraries of the Python environment (PyTorch's nvidia-* wheels) to the
# library path: the binary links cuBLAS, cuRAND and NVRTC dynamically.
library_path() {
    local dirs
    dirs="$(python3 - <<'PY'
import pathlib, site
found = set()
for base in site.getsitepackages():
    for lib in (pathlib.Path(base) / "nvidia").glob("**/lib"):
        if any(lib.glob("lib*.so*")):
            found.add(str(lib))
print(":".join(sorted(found)))
PY
)"
    export LD_LIBRARY_PATH="${dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

run() {
    mkdir -p "$RESULTS"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$RESULTS/gpu.txt"
    library_path
    local twins="$BIN_DIR/cuda_twins" status=0
    if [ ! -x "$twins" ]; then
        echo "gpu-check: $twins is missing; run 'scripts/gpu-check.sh build' first and carry $BIN_DIR" >&2
        exit 1
    fi
    if ldd "$twins" | grep 'not found'; then
        echo "gpu-check: the libraries above are missing (the binary needs CUDA 13 libraries)" >&2
    fi
    "$twins" --ignored --nocapture --test-threads 1 2>&1 | tee "$RESULTS/twins.txt" || status=$?
    python3 scripts/torch-lstm-bench.py 2>&1 | tee "$RESULTS/torch.txt" || status=$?

    echo
    echo "== summary"
    printf '%-40s %s\n' "measurement" "value"
    grep -E '^kernel ' "$RESULTS/twins.txt" \
        | sed -E 's/^kernel (.*): relative error (.*)$/\1\t\2/' \
        | while IFS=$'\t' read -r name value; do printf '%-40s %s\n' "$name" "$value"; done
    grep -E '^lstm stack ' "$RESULTS/twins.txt" \
        | sed -E 's/^(lstm stack [^:]*): (.*)$/kernels \1\t\2/' \
        | while IFS=$'\t' read -r name value; do printf '%-40s %s\n' "$name" "$value"; done
    grep -E '^torch_' "$RESULTS/torch.txt" \
        | while IFS=$'\t' read -r name value; do printf '%-40s %s tokens/s\n' "$name" "$value"; done
    printf '%-40s %s\n' "ulmfit bench lm --device cuda" "not available (no --device option)"
    grep -E '^test result' "$RESULTS/twins.txt" || true
    exit "$status"
}

case "${1:-}" in
    build) build ;;
    run) run ;;
    *)
        echo "usage: scripts/gpu-check.sh build|run" >&2
        exit 2
        ;;
esac
