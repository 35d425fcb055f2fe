#!/usr/bin/env bash
# Fetch libtorch 2.11.0 (the version tch 0.24.0 is built for) from PyPI's torch wheel into a cache
# outside the clone, and print the LIBTORCH path (<cache>/libtorch-2.11.0/torch) on stdout.
#
# Usage: scripts/setup-libtorch.sh [cpu|cuda]
#   cpu  (default) torch/lib + torch/include and the two small CUDA runtime libs libtorch_cpu needs
#   cuda           also the CUDA libraries a `--features cuda` build loads
#
# The cache root is ${BERGSON_RS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bergson-rs}. Work happens in
# <root>/.tmp-*; the finished tree is moved into place with one rename and a marker is written last,
# so an interrupted download never leaves a cache that looks complete. Re-runs return at once.
set -euo pipefail

flavour="${1:-cpu}"
case "$flavour" in cpu|cuda) ;; *) echo "usage: $0 [cpu|cuda]" >&2; exit 2 ;; esac

root="${BERGSON_RS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bergson-rs}"
dest="$root/libtorch-2.11.0"
marker="$dest/.ok-$flavour"
if [ -f "$marker" ]; then echo "$dest/torch"; exit 0; fi

mkdir -p "$root"
exec 9>"$root/.lock"
flock 9
if [ -f "$marker" ]; then echo "$dest/torch"; exit 0; fi

# Leftovers of a killed run are safe to remove: we hold the lock.
rm -rf "$root"/.tmp-*
tmp="$(mktemp -d "$root/.tmp-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

python="${PYTHON:-python3}"
platforms=(--platform manylinux2014_x86_64)
for n in $(seq 17 28); do platforms+=(--platform "manylinux_2_${n}_x86_64"); done

download() {
  "$python" -m pip download --quiet --no-cache-dir --no-deps --only-binary=:all: --python-version 3.11 \
    --implementation cp --abi cp311 "${platforms[@]}" -d "$tmp/wheels" "$@" >&2
}

unpack() { # wheel, member patterns...
  local wheel="$1"; shift
  "$python" - "$wheel" "$tmp/tree" "$@" <<'PY'
import fnmatch, sys, zipfile
wheel, out, pats = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if any(fnmatch.fnmatch(info.filename, p) for p in pats):
            z.extract(info, out)
PY
}

cpu_pins=(torch==2.11.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85)
cuda_pins=(nvidia-cublas==13.1.0.3 nvidia-cufft==12.0.0.61 nvidia-cufile==1.15.1.6
  nvidia-curand==10.4.0.35 nvidia-cusparse==12.6.3.3 nvidia-nvjitlink==13.0.88
  nvidia-cudnn-cu13==9.19.0.56 nvidia-cusparselt-cu13==0.8.0 nvidia-nccl-cu13==2.28.9
  nvidia-nvshmem-cu13==3.4.5 nvidia-cusolver==12.0.4.66 nvidia-cuda-nvrtc==13.0.88 nvidia-nvtx==13.0.85)

if [ ! -f "$dest/.ok-cpu" ]; then
  echo "bergson-rs: downloading libtorch 2.11.0 from PyPI (about 540 MB, once) into $dest" >&2
  download "${cpu_pins[@]}"
  mkdir -p "$tmp/tree"
  for w in "$tmp"/wheels/*.whl; do
    case "$(basename "$w")" in
      torch-*) unpack "$w" 'torch/lib/*' 'torch/include/*' ;;
      *) unpack "$w" 'nvidia/*' ;;
    esac
  done
  rm -rf "$tmp/wheels"
  rm -rf "$dest"
  mv -T "$tmp/tree" "$dest"
  touch "$dest/.ok-cpu"
fi

if [ "$flavour" = cuda ] && [ ! -f "$dest/.ok-cuda" ]; then
  echo "bergson-rs: downloading the CUDA libraries (about 1.9 GB, once)" >&2
  download "${cuda_pins[@]}"
  mkdir -p "$tmp/tree"
  for w in "$tmp"/wheels/*.whl; do unpack "$w" 'nvidia/*'; done
  cp -a "$tmp/tree/nvidia/." "$dest/nvidia/"
  touch "$dest/.ok-cuda"
fi

echo "$dest/torch"
