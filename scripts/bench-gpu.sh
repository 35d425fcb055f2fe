#!/usr/bin/env bash
# The build-throughput comparison on a GPU: bergson-rs (`--features cuda`, `--device cuda`)
# against Python Bergson 2.5.1 on the same generated workloads, as `cargo bench --bench
# throughput` does on a CPU. Run it on a machine with an NVIDIA GPU, Rust, and a Python whose
# torch is 2.11 with CUDA and that has bergson 2.5.1:
#   BERGSON_PY=/path/to/python scripts/bench-gpu.sh [--docs 4000] [--workload neox|llama|all]
# libtorch is that Python's torch (or $LIBTORCH); extra arguments go to the benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${BERGSON_PY:-python3}"
export BERGSON_PY="$py"
if [ -z "${LIBTORCH:-}" ]; then
  LIBTORCH="$("$py" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
  export LIBTORCH
fi
"$py" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device visible to torch"'
exec cargo bench -p bergson-cli --features cuda --bench throughput -- --device cuda --docs 4000 "$@"
