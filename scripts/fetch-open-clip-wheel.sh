#!/usr/bin/env bash
# Downloads open_clip and the pure-Python packages it needs that the GPU machine lacks, so that
# benches/pytorch_reference.py can run open_clip's ViT-B-32 there without a network.
#
# The GPU machine (docs of the device tool, KINDS.md, read 2026-12-03) runs Python 3.12 with
# torch 2.11, torchvision, regex, tqdm, huggingface-hub, safetensors and timm installed, and has
# no ftfy or wcwidth. open_clip_torch 3.3.0 requires torch>=2.0, torchvision, regex, ftfy, tqdm,
# huggingface-hub, safetensors and timm>=1.0.17; ftfy requires wcwidth. timm comes along in case
# the installed one is older than 1.0.17: pip keeps an installed timm that satisfies the pin.
# All four are py3-none-any wheels (about 4.5 MB together).
#
# Usage: scripts/fetch-open-clip-wheel.sh [DIR]    (default: wheels/, which .gitignore ignores)
# Then on the GPU machine, with DIR carried beside the repository:
#   python3 -m pip install --no-index --find-links wheels open_clip_torch
# or, where site-packages is read-only, into a folder on PYTHONPATH (no dependency resolution):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site wheels/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail

cd "$(dirname "$0")/.."
dest=${1:-wheels}
# Versions installed and run with benches/pytorch_reference.py on 2026-12-03.
packages=(open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.7.0 timm==1.0.31)

mkdir -p "$dest"
# --python-version makes pip check each wheel's Requires-Python against the GPU machine's 3.12.
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 -d "$dest" "${packages[@]}"

for package in "${packages[@]}"; do
    name=${package%%==*}
    version=${package##*==}
    wheel=$(ls "$dest"/"${name}"-"${version}"-*.whl 2>/dev/null | head -n 1)
    if [[ -z $wheel ]]; then
        echo "error: no wheel for $package in $dest" >&2
        exit 1
    fi
    # A platform wheel would tie the folder to this machine's Python and processor.
    if [[ $wheel != *-py3-none-any.whl ]]; then
        echo "error: $wheel is not a pure-Python wheel" >&2
        exit 1
    fi
    echo "$wheel"
done
echo "install on the GPU machine: python3 -m pip install --no-index --find-links $dest open_clip_torch"
