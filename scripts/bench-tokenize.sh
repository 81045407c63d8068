#!/usr/bin/env bash
# Times `ulmfit tokenize` on the 25,000 IMDb train reviews (one per line) and, when a
# Python environment with fastai is given, fastai's default tokenizer on the same file,
# in the same run.
#
# usage: scripts/bench-tokenize.sh ACLIMDB_DIR [RUNS]
#   ACLIMDB_DIR  an unpacked aclImdb folder (train/pos, train/neg)
#   RUNS         timed runs of ulmfit, the median is reported (default 5)
# environment:
#   REFERENCE_PYTHON  python with fastai 2.8.12 (see the fastai reference setup); fastai
#                     is skipped when unset
#   THREADS           worker threads for ulmfit (default 2)
set -euo pipefail

imdb=${1:?usage: scripts/bench-tokenize.sh ACLIMDB_DIR [RUNS]}
runs=${2:-5}
threads=${THREADS:-2}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cargo build --release --quiet --manifest-path "$here/Cargo.toml"
bin=${CARGO_TARGET_DIR:-$here/target}/release/ulmfit

# One review per line, positive then negative, each sorted by numeric file id.
python3 - "$imdb" "$work/reviews.txt" <<'PY'
import os, sys
root, out = sys.argv[1], sys.argv[2]
with open(out, "w", encoding="utf-8") as f:
    for label in ("pos", "neg"):
        folder = os.path.join(root, "train", label)
        names = sorted(os.listdir(folder), key=lambda n: int(n.split("_")[0]))
        for name in names:
            text = open(os.path.join(folder, name), encoding="utf-8").read()
            f.write(text.replace("\n", " ") + "\n")
PY

"$bin" tokenize "$work/reviews.txt" --threads "$threads" > "$work/tokens.jsonl"
tokens=$(python3 -c 'import json,sys; print(sum(len(json.loads(l)["tokens"]) for l in open(sys.argv[1])))' "$work/tokens.jsonl")

times=()
for _ in $(seq "$runs"); do
  start=$(date +%s.%N)
  "$bin" tokenize "$work/reviews.txt" --threads "$threads" > "$work/tokens.jsonl"
  end=$(date +%s.%N)
  times+=("$(echo "$end - $start" | bc -l)")
done
median=$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "ulmfit tokenize, $threads threads: $tokens tokens, median ${median} s over $runs runs," \
  "$(echo "$tokens / $median" | bc) tokens/s"

if [[ -n "${REFERENCE_PYTHON:-}" ]]; then
  "$REFERENCE_PYTHON" - "$work/reviews.txt" <<'PY' 2>/dev/null
import sys, time
from fastai.text.core import TokenizeWithRules, WordTokenizer, defaults
texts = open(sys.argv[1], encoding="utf-8").read().split("\n")[:-1]
tok = TokenizeWithRules(WordTokenizer(), rules=defaults.text_proc_rules)
start = time.perf_counter()
n = sum(len(t) for t in tok(texts))
seconds = time.perf_counter() - start
print(f"fastai TokenizeWithRules, 1 process: {n} tokens, {seconds:.2f} s, {n / seconds:.0f} tokens/s")
PY
fi
