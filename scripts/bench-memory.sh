#!/usr/bin/env bash
# Streams a 1 GB plain-text corpus through `ulmfit vocab build`, `ulmfit numericalize`
# and `ulmfit tokenize`, and prints each command's wall time and peak RSS (GNU time).
#
# usage: scripts/bench-memory.sh [SOURCE_DIR] [TARGET_MB]
#   SOURCE_DIR  folder of .txt files repeated until the corpus reaches TARGET_MB
#               (default ../shared/data/pretrain)
#   TARGET_MB   corpus size in MB (default 1024)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
source_dir=${1:-$here/../shared/data/pretrain}
target_mb=${2:-1024}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cargo build --release --quiet --manifest-path "$here/Cargo.toml"
bin=${CARGO_TARGET_DIR:-$here/target}/release/ulmfit

corpus=$work/corpus.txt
while (( $(stat -c %s "$corpus" 2>/dev/null || echo 0) < target_mb * 1024 * 1024 )); do
  cat "$source_dir"/*.txt >> "$corpus"
done
echo "corpus: $(stat -c %s "$corpus") bytes"

/usr/bin/time -f "vocab build: %e s, peak RSS %M KB" \
  "$bin" -q vocab build --corpus "$corpus" --out "$work/vocab"
/usr/bin/time -f "numericalize: %e s, peak RSS %M KB" \
  "$bin" -q numericalize --vocab "$work/vocab" --corpus "$corpus" --out "$work/corpus.tok"
/usr/bin/time -f "tokenize: %e s, peak RSS %M KB" \
  "$bin" -q tokenize "$corpus" > /dev/null
