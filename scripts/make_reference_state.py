"""Writes the PyTorch reference state of DESIGN section 8, level 3, for the share-nothing CLIP,
with open_clip's own model class, into tests/data/. `cargo test --test reference_state` checks
that msclip's CPU backend (f64 and f32) and the emulated GPU backend reproduce it.

    pip install torch==2.15.0 open_clip_torch==3.3.0 safetensors
    python3 scripts/make_reference_state.py tests/data

It writes, for a small CLIP with the layout of the `tiny-clip` preset (QuickGELU, pre-LN
blocks, EOT pooling, LayerNorm eps 1e-5) but narrower and with ragged sizes, so the files stay
small (under 1 MB) and no size is a multiple of a kernel tile:

- reference_clip.safetensors: the weights, exactly as open_clip's `model.state_dict()` (f32,
  drawn by open_clip's own initialisation from torch.manual_seed(0)). msclip reads it with its
  open_clip importer, so the test also proves that a file open_clip writes loads here.
- reference_clip_state.safetensors: the inputs (normalised images, token ids with captions of
  different lengths, EOT the largest id as open_clip's argmax pooling needs) and what the model
  computes from them in float64: image and text features, the symmetric InfoNCE loss (open_clip's
  ClipLoss), the gradient of every parameter, and the losses after each of three AdamW steps
  (torch.optim.AdamW: lr 1e-3, betas (0.9, 0.98), eps 1e-6, weight decay 0.2 on tensors of two or
  more dimensions and none on the others, open_clip's split by dimension). The architecture is in
  its metadata (`open_clip_config`) beside the versions that made it.

open_clip_shapes_vit_b_32_quickgelu.json: every tensor name and shape of open_clip's
`ViT-B-32-quickgelu` state dict, which the `clip-b32` preset must match one to one.
"""

import json
import sys
from pathlib import Path

import open_clip
import torch
from open_clip.loss import ClipLoss
from safetensors.torch import save_file

CONFIG = {
    "embed_dim": 24,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 40, "layers": 2, "width": 48, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 13, "vocab_size": 97, "width": 32, "heads": 2, "layers": 2},
}
BATCH = 5
# Token ids: SOT and EOT are the two largest, as in CLIP's vocabulary; 0 pads.
SOT, EOT = 95, 96
CAPTION_LENGTHS = [13, 4, 9, 2, 11]  # with SOT and EOT; 13 fills the context
ADAMW_STEPS = 3


def tokens(generator):
    context = CONFIG["text_cfg"]["context_length"]
    rows = torch.zeros(BATCH, context, dtype=torch.int64)
    for row, length in enumerate(CAPTION_LENGTHS):
        words = torch.randint(1, SOT, (length - 2,), generator=generator)
        rows[row, :length] = torch.cat([torch.tensor([SOT]), words, torch.tensor([EOT])])
    return rows


def loss_of(model, images, text):
    image_features = model.encode_image(images, normalize=True)
    text_features = model.encode_text(text, normalize=True)
    loss = ClipLoss()(image_features, text_features, model.logit_scale.exp())
    return image_features, text_features, loss


def main(out):
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**CONFIG)
    weights = {name: t.detach().clone().contiguous() for name, t in model.state_dict().items()}
    metadata = {
        "open_clip_config": json.dumps(CONFIG),
        "made_by": "scripts/make_reference_state.py",
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
    }
    save_file(weights, out / "reference_clip.safetensors", metadata=metadata)

    generator = torch.Generator().manual_seed(1)
    size = CONFIG["vision_cfg"]["image_size"]
    images = torch.randn(BATCH, 3, size, size, generator=generator, dtype=torch.float64)
    text = tokens(generator)

    model = model.double()
    image_features, text_features, loss = loss_of(model, images, text)
    loss.backward()
    state = {
        "images": images,
        "tokens": text.to(torch.int32),
        "image_features": image_features.detach(),
        "text_features": text_features.detach(),
        "loss": loss.detach().reshape(1),
    }
    for name, p in model.named_parameters():
        state[f"grad/{name}"] = p.grad.detach().clone()

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    losses = []
    for _ in range(ADAMW_STEPS):
        optimizer.step()
        optimizer.zero_grad()
        _, _, loss = loss_of(model, images, text)
        loss.backward()
        losses.append(loss.item())
    state["adamw_losses"] = torch.tensor(losses, dtype=torch.float64)
    save_file({k: v.contiguous() for k, v in state.items()}, out / "reference_clip_state.safetensors", metadata=metadata)

    b32 = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)
    shapes = {name: list(t.shape) for name, t in b32.state_dict().items()}
    (out / "open_clip_shapes_vit_b_32_quickgelu.json").write_text(json.dumps(shapes, indent=0) + "\n")
    print(f"loss {state['loss'].item():.12f}, AdamW losses {losses}, written to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data"))
