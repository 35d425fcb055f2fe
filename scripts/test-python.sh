#!/usr/bin/env bash
# Runs the opt-in tests against Python Bergson 2.5.1 (ignored by `scripts/test.sh`): Python's
# readers (`load_gradients`, `GradientProcessor.load`, `torch.load`, `datasets.load_from_disk`)
# on files bergson-rs wrote.
#
#   scripts/test-python.sh                                  # makes (once) or reuses a venv
#   BERGSON_PY=/path/to/python scripts/test-python.sh       # a Python that has bergson 2.5.1
#   scripts/test-python.sh python_reads_our_index           # only tests whose names match
#
# Without BERGSON_PY, a venv with torch==2.11.0 and bergson==2.5.1 is made once in
# ${BERGSON_RS_CACHE:-~/.cache/bergson-rs}/python-bergson-2.5.1 (outside the clone; several GB,
# as PyPI's torch wheel brings CUDA libraries). Extra arguments are test-name filters.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${BERGSON_PY:-}" ]; then
  root="${BERGSON_RS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bergson-rs}"
  venv="$root/python-bergson-2.5.1"
  # The marker is written last: an interrupted install is redone, never trusted.
  if [ ! -f "$venv/.ok" ]; then
    echo "bergson-rs: installing torch 2.11.0 and bergson 2.5.1 into $venv (once)" >&2
    rm -rf "$venv"
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet torch==2.11.0 bergson==2.5.1
    # torchaudio (pulled in by a dependency) is built for another torch and breaks imports.
    "$venv/bin/python" -m pip uninstall --quiet -y torchaudio
    touch "$venv/.ok"
  fi
  BERGSON_PY="$venv/bin/python"
fi
export BERGSON_PY
"$BERGSON_PY" -c 'import importlib.metadata as m; v = m.version("bergson"); assert v == "2.5.1", f"BERGSON_PY has bergson {v}, not 2.5.1"'
# The tests read local files only; offline, huggingface_hub fails at once instead of retrying.
export HF_HUB_OFFLINE=1

if [ -z "${LIBTORCH:-}" ]; then
  lt="$(bash scripts/setup-libtorch.sh)"
  ln -sfn "$(dirname "$lt")" .libtorch
fi
# The test files that hold the Python tests; `--ignored` runs exactly those (nothing else in
# these files is ignored but dist_gloo's `rank_main`, which does nothing without its ranks'
# environment).
exec cargo test --workspace --no-fail-fast --test bergson_parity --test pickle_python --test data_hf_dataset \
  --test dist_gloo --test build_nproc -- --ignored "$@"
