#!/usr/bin/env bash
# Builds here what scripts/gpu-session.sh needs on the GPU machine, which has the NVIDIA driver,
# Python and PyTorch but no Rust and no network, into two ignored folders:
#   gpu-session/bundle.tar.xz  the release binary (sm_90a kernels) and the GPU parity test
#                              binaries, stripped and compressed as one xz stream (about 11 MB
#                              for 16 binaries of 11-32 MB: they share the kernel images, which
#                              xz's 64 MiB window stores once; gzip made 68 MB, over the 64 MiB
#                              the device tool carries with the working tree)
#   wheels/                    open_clip and the pure-Python packages it needs
# Then call the device tool with carry ["gpu-session", "wheels"] and the command
#   bash scripts/gpu-session.sh
set -euo pipefail

cd "$(dirname "$0")/.."
export NVCC=${NVCC:-$PWD/.cuda-toolchain/bin/nvcc}
if [[ ! -x $NVCC ]]; then
    echo "error: no nvcc at $NVCC: run scripts/install-cuda-toolchain.sh first (the GPU kernels need it)" >&2
    exit 1
fi
# The test files that run on a GPU when one is present: those taking their devices from
# tests/common/gpu.rs (gpu_devices, model_devices, tensor_core_backends).
mapfile -t tests < <(grep -lE 'gpu_devices|model_devices|tensor_core_backends' tests/*.rs | xargs -n1 basename | sed 's/\.rs$//')

cargo build --release
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
mkdir -p "$staging/tests"
strip -o "$staging/msclip" target/release/msclip
# grep reads to the end (no -q): msclip must not meet a closed pipe.
if ! "$staging/msclip" kernels | grep "sm_90a" >/dev/null; then
    echo "error: the binary has no sm_90a kernels" >&2
    exit 1
fi
# Each test target's executable, as cargo reports it.
cargo test --release --no-run --message-format=json "${tests[@]/#/--test=}" 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "test" in m["target"]["kind"]:
        print(m["target"]["name"], m["executable"])
' | while read -r name path; do
    strip -o "$staging/tests/$name" "$path"
done
for t in "${tests[@]}"; do
    [[ -x $staging/tests/$t ]] || { echo "error: no test binary for $t" >&2; exit 1; }
done
mkdir -p gpu-session
rm -f gpu-session/bundle.tar.*
tar -cf - -C "$staging" . | xz -9 -T1 >gpu-session/bundle.tar.xz
scripts/fetch-open-clip-wheel.sh wheels
du -sh gpu-session/bundle.tar.xz wheels
