"""Converts a checkpoint of MS-CLIP's original code (Hxyou/MSCLIP: b32-yfcc-msclips_ckpt.pth,
b16-yfcc-msclips_ckpt.pth, b32-laion-msclips_ckpt.pth) to a safetensors file in the original's
own names, which `msclip eval|benchmark|encode --run R --weights F` reads into a run of the
matching MS-CLIP preset (docs/interop.md).

    pip install torch safetensors
    python3 scripts/convert_msclip_pth.py b32-yfcc-msclips_ckpt.pth msclip-s-b32.safetensors

The .pth is opened with torch.load(weights_only=True), which unpickles tensors and plain
containers only and runs no code from the file. It may hold the bare state dict (the released
files do: the original's tools/zero_shot.py passes torch.load's result to load_state_dict) or a
training checkpoint that wraps it under "state_dict" or "model"; a "module." prefix
(DistributedDataParallel's) is removed from every name.

Nothing is renamed or dropped: the name map lives in msclip (src/weights/msclip), which also
checks and drops the BatchNorm `num_batches_tracked` counters and ties the two copies of each
modality-shared weight. Those copies share one storage in the .pth, which safetensors refuses, so
every tensor is written as a copy of its own. msclip itself never reads a pickle.
"""

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file

WRAPPERS = ("state_dict", "model")
DDP_PREFIX = "module."


def state_dict_of(checkpoint):
    """The name -> tensor dict inside what torch.load returned."""
    for key in WRAPPERS:
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    if not isinstance(checkpoint, dict):
        raise SystemExit(f"expected a state dict (a dict of tensors), found {type(checkpoint).__name__}")
    others = sorted(name for name, value in checkpoint.items() if not isinstance(value, torch.Tensor))
    if others:
        raise SystemExit(f"not a state dict: {len(others)} entries are not tensors, e.g. {others[:5]}")
    if checkpoint and all(name.startswith(DDP_PREFIX) for name in checkpoint):
        checkpoint = {name[len(DDP_PREFIX) :]: value for name, value in checkpoint.items()}
    return checkpoint


def convert(source, target):
    """Writes the state dict in the .pth at `source` to the safetensors file `target`."""
    state = state_dict_of(torch.load(source, map_location="cpu", weights_only=True))
    tensors = {name: value.detach().clone().contiguous() for name, value in state.items()}
    metadata = {"format": "msclip-original-state-dict", "converted_from": Path(source).name}
    save_file(tensors, str(target), metadata=metadata)
    elements = sum(t.numel() for t in tensors.values())
    print(f"{target}: {len(tensors)} tensors, {elements:,} values")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pth", help="the original checkpoint (.pth)")
    parser.add_argument("out", help="the safetensors file to write")
    args = parser.parse_args()
    convert(args.pth, args.out)


if __name__ == "__main__":
    main()
