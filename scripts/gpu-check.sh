#!/usr/bin/env bash
# GPU check of the CUDA build, in two halves.
#
#   scripts/gpu-check.sh build   (here, no GPU needed) builds the `ulmfit` binary and the
#                                `cuda_twins` test binary with `--features cuda`, strips
#                                them and writes them xz-compressed to target/gpu-bin/.
#                                It fails when the compressed files together reach the
#                                64 MiB that the device tool carries. Stripped, the two
#                                take about 110 MiB, mostly PTX text, and about 14 MiB
#                                compressed.
#   scripts/gpu-check.sh run     (on the GPU machine; no Rust there, Python with PyTorch)
#                                1. checks every kernel against its CPU twin on random
#                                   inputs (f32, relative error at most 1e-5), and a
#                                   training step of a small language model and classifier
#                                   on the GPU against the CPU (at most 1e-4);
#                                2. times `ulmfit bench lm --preset wt103 --device cuda`
#                                   (training and inference tokens/s);
#                                3. times PyTorch's cuDNN LSTM at the same sizes
#                                   (scripts/torch-lstm-bench.py);
#                                and prints a summary table last. Results go to
#                                $OUT/gpu-check (else /tmp/gpu-check).
#
# On the device tool: carry target/gpu-bin and run `scripts/gpu-check.sh run`.
#
# Libraries: Candle links cudarc's CUDA libraries dynamically, so the binaries need
# libcuda.so.1 (the driver) and, from CUDA 13, libcublas.so.13 (which loads
# libcublasLt.so.13), libcurand.so.10 and libcudart.so.13 at start-up (`readelf -d`
# lists these four as NEEDED). The run half sets
# LD_LIBRARY_PATH to every `lib` folder of the nvidia wheels that PyTorch depends on
# (site-packages/nvidia/*/lib and site-packages/nvidia/cu13/lib), plus the driver
# folder that contains libcuda.so.1 (/usr/local/nvidia/lib64, /usr/local/nvidia/lib or
# /usr/lib/x86_64-linux-gnu). It stops with the missing names when `ldd` still finds a
# library absent.
# A PyTorch built for CUDA 12 ships CUDA 12 sonames, which this build cannot use.
#
# NOTE: the run half has not run on a GPU machine yet. The kernels are f32 only, so
# there is no bf16 check (tolerance 1e-2) until bf16 kernels exist.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN_DIR="${ULMFIT_GPU_BIN:-target/gpu-bin}"
RESULTS="${OUT:-/tmp}/gpu-check"
UNPACKED="${TMPDIR:-/tmp}/ulmfit-gpu-bin"

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

# Prints the executable that cargo built for a target (`kind name`), from its JSON messages.
artifact() {
    python3 -c 'import json, sys
kind, name = sys.argv[1], sys.argv[2]
for line in sys.stdin:
    message = json.loads(line)
    if message.get("reason") != "compiler-artifact" or not message.get("executable"):
        continue
    target = message["target"]
    if target["name"] == name and kind in target["kind"]:
        print(message["executable"])' "$1" "$2"
}

build() {
    # shellcheck source=scripts/cuda-env.sh
    source scripts/cuda-env.sh
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-cuda}"
    write_link_stubs
    local twins ulmfit
    twins="$(cargo test --release --features cuda --test cuda_twins --no-run --message-format=json \
        | artifact test cuda_twins)"
    ulmfit="$(cargo build --release --features cuda --bin ulmfit --message-format=json \
        | artifact bin ulmfit)"
    rm -rf "$BIN_DIR"
    mkdir -p "$BIN_DIR"
    local total=0 size name source
    for name in ulmfit cuda_twins; do
        source="$ulmfit"
        [ "$name" = cuda_twins ] && source="$twins"
        strip -o "$BIN_DIR/$name" "$source"
        size="$(stat -c %s "$BIN_DIR/$name")"
        echo "gpu-check: stripped $name is $((size / 1024 / 1024)) MiB ($size bytes)"
        xz -T0 -6 "$BIN_DIR/$name"
        size="$(stat -c %s "$BIN_DIR/$name.xz")"
        total=$((total + size))
        echo "gpu-check: $BIN_DIR/$name.xz is $((size / 1024 / 1024)) MiB ($size bytes)"
    done
    if [ "$total" -ge $((64 * 1024 * 1024)) ]; then
        echo "gpu-check: the compressed binaries take $((total / 1024 / 1024)) MiB, over the 64 MiB that can be carried" >&2
        exit 1
    fi
}

# Unpacks the xz-compressed binaries of $BIN_DIR into $UNPACKED with Python's lzma
# module, which needs no xz program on the GPU machine.
unpack() {
    mkdir -p "$UNPACKED"
    local name
    for name in ulmfit cuda_twins; do
        if [ ! -f "$BIN_DIR/$name.xz" ]; then
            echo "gpu-check: $BIN_DIR/$name.xz is missing; run 'scripts/gpu-check.sh build' first and carry $BIN_DIR" >&2
            exit 1
        fi
        python3 -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as packed, open(sys.argv[2], "wb") as out:
    shutil.copyfileobj(packed, out)' "$BIN_DIR/$name.xz" "$UNPACKED/$name"
        chmod +x "$UNPACKED/$name"
    done
}

# Puts the CUDA libraries of the Python environment (PyTorch's nvidia wheels) and the
# driver's folders on the library path, because the binaries link cuBLAS, cuRAND, NVRTC
# and the CUDA runtime dynamically.
library_path() {
    local dirs
    dirs="$(python3 - <<'PY'
import pathlib, site
bases = list(site.getsitepackages())
try:
    import torch
    bases.append(str(pathlib.Path(torch.__file__).parent.parent))
except ImportError:
    pass
found = set()
for base in bases:
    for lib in (pathlib.Path(base) / "nvidia").glob("**/lib"):
        if any(lib.glob("lib*.so*")):
            found.add(str(lib))
print(":".join(sorted(found)))
PY
)"
    local driver
    for driver in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu; do
        if [ -e "$driver/libcuda.so.1" ]; then
            dirs="${dirs:+$dirs:}$driver"
        fi
    done
    export LD_LIBRARY_PATH="${dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "gpu-check: LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
}

# Prints `name<TAB>value` for a key of the JSON report of `ulmfit bench lm`.
json_field() {
    python3 -c 'import json, sys
report = json.load(open(sys.argv[1]))
value = report.get(sys.argv[2])
print("n/a" if value is None else f"{value:.0f}")' "$1" "$2"
}

run() {
    mkdir -p "$RESULTS"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$RESULTS/gpu.txt"
    library_path
    unpack
    local twins="$UNPACKED/cuda_twins" ulmfit="$UNPACKED/ulmfit" status=0 binary
    for binary in "$twins" "$ulmfit"; do
        if ldd "$binary" | grep 'not found'; then
            echo "gpu-check: $binary lacks the libraries above (it needs the CUDA 13 libraries of PyTorch's nvidia wheels)" >&2
            exit 1
        fi
    done

    echo "== kernels and model against the CPU"
    "$twins" --ignored --nocapture --test-threads 1 2>&1 | tee "$RESULTS/twins.txt" || status=$?
    echo "== ulmfit bench lm --preset wt103 --device cuda"
    "$ulmfit" bench lm --preset wt103 --device cuda --batches 10 --warmup 2 --json \
        >"$RESULTS/ulmfit-bench.json" 2>"$RESULTS/ulmfit-bench.log" || status=$?
    cat "$RESULTS/ulmfit-bench.log" "$RESULTS/ulmfit-bench.json"
    echo "== PyTorch cuDNN LSTM"
    python3 scripts/torch-lstm-bench.py 2>&1 | tee "$RESULTS/torch.txt" || status=$?

    echo
    echo "== summary ($(cut -d, -f1 "$RESULTS/gpu.txt"))"
    printf '%-52s %s\n' "measurement" "value"
    grep -E '^(kernel|model) ' "$RESULTS/twins.txt" \
        | sed -E 's/^(kernel|model) (.*): relative error (.*)$/\1 \2\t\3/' \
        | while IFS=$'\t' read -r name value; do printf '%-52s %s\n' "$name" "$value"; done
    grep -E '^lstm stack ' "$RESULTS/twins.txt" \
        | sed -E 's/^(lstm stack [^:]*): (.*)$/kernels \1\t\2/' \
        | while IFS=$'\t' read -r name value; do printf '%-52s %s\n' "$name" "$value"; done
    if [ -s "$RESULTS/ulmfit-bench.json" ]; then
        printf '%-52s %s tokens/s\n' "ulmfit wt103 train (AdamW, full logits)" \
            "$(json_field "$RESULTS/ulmfit-bench.json" train_tokens_per_s)"
        printf '%-52s %s tokens/s\n' "ulmfit wt103 inference" \
            "$(json_field "$RESULTS/ulmfit-bench.json" infer_tokens_per_s)"
    else
        printf '%-52s %s\n' "ulmfit wt103" "failed (see $RESULTS/ulmfit-bench.log)"
    fi
    grep -E '^torch_' "$RESULTS/torch.txt" \
        | while IFS=$'\t' read -r name value; do printf '%-52s %s tokens/s\n' "$name" "$value"; done
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
