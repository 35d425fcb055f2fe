#!/usr/bin/env bash
# The embedded demo: builds bergson-rs, indexes the committed tiny model's training corpus with a
# progress bar, then shows which training documents each held-out query fact is attributed to.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${LIBTORCH:-}" ]; then
  lt="$(bash scripts/setup-libtorch.sh)"
  ln -sfn "$(dirname "$lt")" .libtorch
fi
cargo build --quiet --workspace
exec target/debug/bergson demo "$@"
