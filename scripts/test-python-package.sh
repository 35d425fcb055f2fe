#!/usr/bin/env bash
# Builds the `bergson_rs` Python package (crates/bergson-py) and runs its pytest suite: a real
# HF Trainer with our GradientCollectorCallback against Python Bergson 2.5.1's committed output,
# and the Attributor against Bergson's results on the same index.
#
#   scripts/test-python-package.sh                       # makes (once) or reuses a venv
#   BERGSON_RS_VENV=/path/to/venv scripts/test-python-package.sh   # an existing venv, as is
#   scripts/test-python-package.sh -k trace              # extra arguments go to pytest
#
# The venv (torch==2.11.0, transformers, datasets, pytest, maturin) is made once in
# ${BERGSON_RS_CACHE:-~/.cache/bergson-rs}/python-torch-2.11, outside the clone: about 3.3 GB
# downloaded and 5 GB on disk, as PyPI's torch wheel brings its CUDA libraries (see
# docs/python.md for the measured time). With bergson==2.5.1 installed in it as well, the live
# comparisons with Bergson's callback run too.
#
# The extension is built with the dev profile into the workspace's target directory, so it
# reuses the dependencies `cargo test` compiled (crates/bergson-py/Cargo.lock is the
# workspace's lock plus pyo3).
set -euo pipefail
cd "$(dirname "$0")/.."

root="${BERGSON_RS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bergson-rs}"
# BERGSON_RS_VENV: an existing venv with torch 2.11, transformers, accelerate, datasets, pytest
# and maturin (and bergson 2.5.1 for the live comparisons), used as it is.
venv="${BERGSON_RS_VENV:-$root/python-torch-2.11}"
if [ -z "${BERGSON_RS_VENV:-}" ] && [ ! -f "$venv/.ok" ]; then
  echo "bergson-rs: installing torch 2.11.0, transformers and pytest into $venv (once)" >&2
  start=$(date +%s)
  rm -rf "$venv"
  "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet --no-cache-dir torch==2.11.0 'transformers>=4.46,<6' accelerate datasets \
    pytest 'maturin>=1.5,<2' numpy
  # The marker is written last: an interrupted install is redone, never trusted.
  touch "$venv/.ok"
  echo "bergson-rs: venv ready in $(( $(date +%s) - start )) s" >&2
fi
py="$venv/bin/python"

if [ -z "${LIBTORCH:-}" ]; then
  lt="$(bash scripts/setup-libtorch.sh)"
  ln -sfn "$(dirname "$lt")" .libtorch
fi

build_start=$(date +%s)
wheels="$(mktemp -d)"
trap 'rm -rf "$wheels"' EXIT
# torch-sys asks `python` for the headers of the Python it builds against.
PATH="$venv/bin:$PATH" "$venv/bin/maturin" build --quiet --profile dev \
  --manifest-path crates/bergson-py/Cargo.toml --target-dir target \
  --interpreter "$py" --out "$wheels" --compatibility linux --auditwheel skip
"$py" -m pip install --quiet --force-reinstall --no-deps "$wheels"/bergson_rs-*.whl
echo "bergson-rs: Python extension built and installed in $(( $(date +%s) - build_start )) s" >&2

# Local files only: huggingface_hub fails at once instead of retrying the network.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Tiny models: one thread each keeps the two CI cores from oversubscribing.
export OMP_NUM_THREADS=1
cd crates/bergson-py/tests
exec "$py" -m pytest -q -p no:cacheprovider "$@"
