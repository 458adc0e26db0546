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
- reference_clip_gelu_state.safetensors: the same for the same model with the exact GELU
  (nn.GELU, `quick_gelu` left at open_clip's default, False, as its plain `ViT-B-32` config
  leaves it): the activation has no parameters and draws no random numbers, so the same seed
  gives the same weights (asserted), and reference_clip.safetensors serves both; the same
  inputs, and the features, loss, gradients and AdamW losses of the GELU model.

open_clip_shapes_vit_b_32_quickgelu.json and open_clip_shapes_vit_b_16_quickgelu.json: every
tensor name and shape of open_clip's `ViT-B-32-quickgelu` and `ViT-B-16-quickgelu` state dicts,
which the `clip-b32` and `clip-b16` presets must match one to one (the plain `ViT-B-32` and
`ViT-B-16` have the same tensors). open_clip_model_configs.json: open_clip's own model configs
(`model_configs/*.json`) of the four architectures the `clip-b32`, `clip-b32-gelu`, `clip-b16`
and `clip-b16-gelu` presets are.

safetensors writes its metadata in a per-process hash order, so a file whose tensors and
metadata are unchanged is left as it is rather than rewritten with other bytes
(scripts/reference_io.py). scripts/make_reference_state_msclip.py writes MS-CLIP-S's state.
"""

import json
import sys
from pathlib import Path

import open_clip
import torch
from open_clip.loss import ClipLoss
from open_clip.transformer import QuickGELU
from reference_io import save_if_changed

CONFIG = {
    "embed_dim": 24,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 40, "layers": 2, "width": 48, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 13, "vocab_size": 97, "width": 32, "heads": 2, "layers": 2},
}
# The same model with nn.GELU: open_clip's default, as in its plain model configs.
GELU_CONFIG = {key: value for key, value in CONFIG.items() if key != "quick_gelu"}
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


def metadata_of(config):
    return {
        "open_clip_config": json.dumps(config),
        "made_by": "scripts/make_reference_state.py",
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
    }


def build(config):
    torch.manual_seed(0)
    return open_clip.model.CLIP(**config)


def activations(model):
    return {type(block.mlp.gelu) for block in model.transformer.resblocks} | {
        type(block.mlp.gelu) for block in model.visual.transformer.resblocks
    }


def write_state(model, config, path):
    """Inputs, features, loss, every gradient and the AdamW losses of `model`, in float64."""
    generator = torch.Generator().manual_seed(1)
    size = config["vision_cfg"]["image_size"]
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
    save_if_changed({k: v.contiguous() for k, v in state.items()}, path, metadata_of(config))
    print(f"  loss {state['loss'].item():.12f}, AdamW losses {losses}")


def write_shapes(name, path):
    model = open_clip.create_model(name, pretrained=None)
    shapes = {key: list(t.shape) for key, t in model.state_dict().items()}
    path.write_text(json.dumps(shapes, indent=0) + "\n")


def main(out):
    out.mkdir(parents=True, exist_ok=True)
    model = build(CONFIG)
    weights = {name: t.detach().clone().contiguous() for name, t in model.state_dict().items()}
    save_if_changed(weights, out / "reference_clip.safetensors", metadata_of(CONFIG))

    gelu_model = build(GELU_CONFIG)
    assert activations(model) == {QuickGELU}, activations(model)
    assert activations(gelu_model) == {torch.nn.GELU}, activations(gelu_model)
    assert all(block.mlp.gelu.approximate == "none" for block in gelu_model.transformer.resblocks)
    gelu_weights = gelu_model.state_dict()
    assert list(gelu_weights) == list(weights), "the GELU model has other tensors"
    assert all(torch.equal(gelu_weights[name], t) for name, t in weights.items()), "other weights"

    write_state(model, CONFIG, out / "reference_clip_state.safetensors")
    write_state(gelu_model, GELU_CONFIG, out / "reference_clip_gelu_state.safetensors")

    write_shapes("ViT-B-32-quickgelu", out / "open_clip_shapes_vit_b_32_quickgelu.json")
    write_shapes("ViT-B-16-quickgelu", out / "open_clip_shapes_vit_b_16_quickgelu.json")
    names = ["ViT-B-32-quickgelu", "ViT-B-32", "ViT-B-16-quickgelu", "ViT-B-16"]
    configs = {name: open_clip.get_model_config(name) for name in names}
    (out / "open_clip_model_configs.json").write_text(json.dumps(configs, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data"))
