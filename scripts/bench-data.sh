#!/usr/bin/env bash
# Times the data phase of `bergson build` (read, tokenise: from the pipeline's info log) and
# its peak RSS (/usr/bin/time -v) on the corpus family of scripts/make-corpus.py. A tiny
# --max_tokens keeps the model's share of the run negligible; every row is still read and
# tokenised. Usage: scripts/bench-data.sh CORPUS_DIR [BERGSON_BINARY] [SIZES...]
set -euo pipefail
corpus=${1:?corpus directory}
bin=${2:-target/release/bergson}
shift $(( $# > 1 ? 2 : 1 ))
sizes=${*:-10k 100k 1M}
model=$(dirname "$0")/../tests/fixtures/models/gpt_neox
runs=$(mktemp -d)
trap 'rm -rf "$runs"' EXIT
printf '| rows | format | tokens | read s (CPU s) | tokenise s (CPU s) | setup s | peak RSS MiB | s per M tokens (CPU) |\n'
printf '|---|---|---|---|---|---|---|---|\n'
for size in $sizes; do
  for format in jsonl parquet; do
    log=$runs/log
    RUST_LOG=bergson=info /usr/bin/time -v "$bin" build "$runs/run" --overwrite --quiet --profile \
      --model "$model" --dataset "$corpus/corpus-$size.$format" --max_tokens 4096 >"$log" 2>&1 \
      || { cat "$log"; exit 1; }
    read_line=$(grep 'INFO read' "$log")
    read_s=$(sed -n 's/.* in \([0-9.]*\) s (.*/\1/p' <<<"$read_line")
    read_cpu=$(sed -n 's/.* (\([0-9.]*\) s CPU)/\1/p' <<<"$read_line")
    tok_line=$(grep 'INFO tokenised' "$log")
    tok_s=$(sed -n 's/.* in \([0-9.]*\) s (.*/\1/p' <<<"$tok_line")
    tok_cpu=$(sed -n 's/.* (\([0-9.]*\) s CPU)/\1/p' <<<"$tok_line")
    tokens=$(sed -n 's/.*rows (\([0-9]*\) tokens).*/\1/p' <<<"$tok_line")
    setup_s=$(sed -n 's/.*setup (data, model, projections) *\([0-9.]*\) s.*/\1/p' "$log")
    rss_kb=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$log")
    awk -v n="$size" -v f="$format" -v r="$read_s" -v rc="$read_cpu" -v t="$tok_s" \
        -v tc="$tok_cpu" -v s="$setup_s" -v m="$rss_kb" -v k="$tokens" 'BEGIN {
      printf "| %s | %s | %d | %.2f (%.2f) | %.2f (%.2f) | %.2f | %.0f | %.3f (%.3f) |\n",
        n, f, k, r, rc, t, tc, s, m / 1024, (r + t) / (k / 1e6), (rc + tc) / (k / 1e6)
    }'
  done
done
