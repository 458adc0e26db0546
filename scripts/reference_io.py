"""Writing the reference-state files of scripts/make_reference_state*.py: safetensors writes a
file's metadata in a per-process hash order, so a file whose tensors and metadata are unchanged
is left as it is rather than rewritten with other bytes (a rerun leaves tests/data/ as committed)."""

import json
import struct

from safetensors.torch import save


def parts(data):
    """A safetensors file's header, as a dict, and its tensor bytes."""
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def save_if_changed(tensors, path, metadata):
    data = save(tensors, metadata=metadata)
    if path.exists() and parts(path.read_bytes()) == parts(data):
        print(f"{path}: unchanged")
        return
    path.write_bytes(data)
    print(f"{path}: written")
