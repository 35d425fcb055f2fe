#!/usr/bin/env bash
# Approximate search (FAISS) against exact search on a synthetic 200k x 512 float16 index:
# recall@10, build time, search time, peak memory, size on disk (docs/query.md).
# Needs libfaiss-dev. Usage: scripts/bench-faiss.sh [DIR [ROWS [DIM]]]
set -euo pipefail
dir=${1:-/tmp/bergson-faiss-bench}
rows=${2:-200000}
dim=${3:-512}
export LIBTORCH=${LIBTORCH:-/work/main/.libtorch/torch}
cargo build --release --workspace --features faiss --example ann_recall >&2
bin=target/release/examples/ann_recall
rm -rf "$dir"
"$bin" gen "$dir" "$rows" "$dim"
"$bin" exact "$dir" 10
for factory in Flat IVF1,SQfp16 IVF256,SQfp16 PQ64 IVF256,PQ64; do
  rm -rf "$dir/faiss_${factory//,/_}_cosine"
  "$bin" build "$dir" "$factory"
done
"$bin" search "$dir" Flat 1 false 10
"$bin" search "$dir" IVF1,SQfp16 1 false 10
for nprobe in 1 10 64; do
  "$bin" search "$dir" IVF256,SQfp16 "$nprobe" false 10
done
"$bin" search "$dir" IVF256,SQfp16 10 true 10
"$bin" search "$dir" PQ64 1 false 10
"$bin" search "$dir" IVF256,PQ64 10 false 10
