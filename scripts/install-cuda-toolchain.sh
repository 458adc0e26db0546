#!/usr/bin/env bash
# Installs nvcc (and cuobjdump / nvdisasm for SASS checks, the NVTX headers for tests/nvtx.rs)
# from PyPI wheels into a virtual environment, for machines without a CUDA install (CI, the
# development VMs). No GPU needed.
#
#   scripts/install-cuda-toolchain.sh [DIR]     # default DIR: <repo>/.cuda-toolchain
#
# DIR/bin then holds links to nvcc, ptxas, cuobjdump and nvdisasm; build.rs looks there after
# NVCC, CUDA_HOME and PATH. DIR/include links to the CUDA headers (nvtx3/ among them), beside
# bin/ as in a CUDA install. The last line printed is the path of nvcc, for `export NVCC=...`.
#
# The versions are pinned together (DESIGN 3.1): unpinned, pip mixes a newer NVVM whose PTX the
# 13.0 driver of our GPU machines rejects. cuobjdump and nvdisasm must be 13.2 or newer to read
# sm_90 images and are installed without dependencies so the pins hold.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$repo/.cuda-toolchain}"
python="${PYTHON:-python3}"

had_nvcc=false
if [[ -x "$dir/bin/nvcc" ]] && "$dir/bin/nvcc" --version >/dev/null 2>&1; then
    had_nvcc=true
    # An install from before the NVTX headers were part of it goes on to add them.
    if [[ -f "$dir/include/nvtx3/nvToolsExt.h" ]]; then
        echo "CUDA toolchain already installed in $dir" >&2
        echo "$dir/bin/nvcc"
        exit 0
    fi
fi

mkdir -p "$dir"
"$python" -m venv "$dir/venv"
pip=("$dir/venv/bin/pip" install --quiet --disable-pip-version-check)
"${pip[@]}" nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-nvtx==13.0.85
"${pip[@]}" --no-deps 'nvidia-cuda-cuobjdump>=13.2' 'nvidia-cuda-nvdisasm>=13.2'

cuda_bin="$("$dir/venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "bin"))')"
cuda_include="$(dirname "$cuda_bin")/include"
if [[ ! -f "$cuda_include/nvtx3/nvToolsExt.h" ]]; then
    echo "error: the NVTX headers are missing from $cuda_include after the install" >&2
    exit 1
fi
ln -sfn "$cuda_include" "$dir/include"
mkdir -p "$dir/bin"
for tool in nvcc ptxas cuobjdump nvdisasm; do
    if [[ ! -x "$cuda_bin/$tool" ]]; then
        echo "error: $tool is missing from $cuda_bin after the install" >&2
        exit 1
    fi
    # nvcc reads nvcc.profile from the directory it was invoked from, so a symlink would
    # resolve its include paths against DIR/bin: a small script calls the real binary.
    printf '#!/bin/sh\nexec "%s" "$@"\n' "$cuda_bin/$tool" >"$dir/bin/$tool"
    chmod +x "$dir/bin/$tool"
done
"$dir/bin/nvcc" --version | tail -n 2 >&2
# build.rs does not watch this directory (cargo would rerun it on every build while it is
# absent); touching build.rs makes the next cargo build compile the GPU images. An nvcc that
# worked before needs no rebuild.
if [[ $had_nvcc == false ]]; then
    touch "$repo/build.rs"
fi
echo "$dir/bin/nvcc"
