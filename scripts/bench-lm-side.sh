#!/usr/bin/env bash
# Times the `small` language-model preset side by side: fastai's reference script, then
# each given ulmfit binary in f32 and bf16, alternating for several rounds, and prints
# one JSON line per run ({"round", "side", "result"}).
#
# usage: REFERENCE_PYTHON=/path/to/venv/bin/python scripts/bench-lm-side.sh [ROUNDS] [BINARY...]
#   ROUNDS   rounds of the alternation (default 3)
#   BINARY   ulmfit binaries to compare (default: this checkout's release build); every
#            binary runs in f32, and the last one in bf16 too
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
python=${REFERENCE_PYTHON:?set REFERENCE_PYTHON to the Python of the fastai environment}
reference=${REFERENCE_SCRIPT:-$here/../shared/bench/lstm_throughput.py}
rounds=${1:-3}
shift || true
binaries=("$@")
if [ ${#binaries[@]} -eq 0 ]; then
    cargo build --release --quiet --manifest-path "$here/Cargo.toml"
    binaries=("${CARGO_TARGET_DIR:-$here/target}/release/ulmfit")
fi
last=${binaries[${#binaries[@]}-1]}

for round in $(seq 1 "$rounds"); do
    result=$("$python" "$reference" --preset small --threads 2 | tail -1)
    echo "{\"round\":$round,\"side\":\"fastai\",\"result\":$result}"
    for binary in "${binaries[@]}"; do
        result=$("$binary" bench lm --preset small --threads 2 --json -q | tail -1)
        echo "{\"round\":$round,\"side\":\"$binary f32\",\"result\":$result}"
    done
    result=$("$last" bench lm --preset small --threads 2 --precision bf16 --json -q | tail -1)
    echo "{\"round\":$round,\"side\":\"$last bf16\",\"result\":$result}"
done
