#!/usr/bin/env bash
# Runs the whole test suite: the Rust workspace, then the Python package's tests
# (scripts/test-python-package.sh). Fetches libtorch 2.11.0 into the user cache on first use
# (about 540 MB from PyPI, once) unless LIBTORCH points at one already, and makes the Python
# package's venv once (torch 2.11 from PyPI, about 3.3 GB).
#
# Arguments go to `cargo test` and then skip the Python tests (a filtered run);
# BERGSON_RS_SKIP_PYTHON=1 skips them too.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${LIBTORCH:-}" ]; then
  lt="$(bash scripts/setup-libtorch.sh)"
  ln -sfn "$(dirname "$lt")" .libtorch
fi
# Fifty-odd test binaries each link arrow, tokenizers and libtorch's wrappers: without debug info
# and incremental caches a clean build takes about half the disk (and no longer).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-false}"
export CARGO_PROFILE_DEV_STRIP="${CARGO_PROFILE_DEV_STRIP:-debuginfo}"
# Network errors are retried with back-off for longer than cargo's default three tries.
export CARGO_NET_RETRY="${CARGO_NET_RETRY:-10}"
cargo test --workspace "$@"
if [ $# -eq 0 ] && [ "${BERGSON_RS_SKIP_PYTHON:-0}" != 1 ]; then
  scripts/test-python-package.sh
fi
