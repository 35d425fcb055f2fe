#!/usr/bin/env bash
# Runs the whole test suite. Fetches libtorch 2.11.0 into the user cache on first use (about
# 540 MB from PyPI, once) unless LIBTORCH points at one already.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${LIBTORCH:-}" ]; then
  lt="$(bash scripts/setup-libtorch.sh)"
  ln -sfn "$(dirname "$lt")" .libtorch
fi
exec cargo test --workspace "$@"
