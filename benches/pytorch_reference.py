"""PyTorch's training step for msclip's B/32 and B/16 presets: the reference side of the GPU
step benchmark (issue 13).

Models, each checked against `msclip params --preset NAME` before anything is timed:
  clip-b32      open_clip's `ViT-B-32-quickgelu` (OpenAI's architecture), random init, when
                open_clip is importable; otherwise (or with --clip-impl plain) the plain-PyTorch
                CLIP B/32 below, which has the same architecture.
  msclip-s-b32  MS-CLIP-S written from shared/reference/msclip-architecture.md: attention and
                MLP weights shared between image and text layers 1-11, LayerNorms per modality,
                the early-specialisation conv stem as visual layer 0, an unshared text layer 0,
                and the parallel conv branch fused in before visual blocks 2, 4, 6, 8 and 10.
  msclip-s-b16  the same at a 14x14 grid (stem strides 2,2,2,1; branch strides 2,2,2,2,1).
  oner-b32      a single tower (OneR): every block weight, the final LayerNorm and the
                projection shared; only the patch/token embeddings (and ln_pre) differ.

One step = forward of both towers + symmetric InfoNCE with a learnable logit scale (clamped to
ln 100 after the update, as open_clip's trainer does) + backward + AdamW (fused on CUDA),
optionally with gradient-norm clipping. bf16 autocast on CUDA, fp32 on the CPU; attention
through F.scaled_dot_product_attention (causal for text); --compile tries torch.compile and
falls back to eager with a note. The data are synthetic and made on the device before timing:
one batch of random images and random captions (SOT, random ids, EOT = the largest id at a
random length, zero padding), reused every step. Text runs at the full 77-token context, as
open_clip does (msclip packs captions instead; see docs/benchmarks.md).

Usage (the GPU machine has PyTorch and no network: install open_clip first from the wheels
that scripts/fetch-open-clip-wheel.sh downloaded):
    python3 benches/pytorch_reference.py --model all --batch 256 --device cuda \
        --steps 20 --warmup 5 [--compile] [--json out.json] [--msclip target/release/msclip]

CPU smoke run, 2026-12-03, the 2-core Intel Xeon dev VM, torch 2.15.0, open_clip 3.3.0
(proof that the script runs; not a GPU measurement):
    $ python3 benches/pytorch_reference.py --model all --device cpu --batch 2 --steps 2 --warmup 1 \
        --json /tmp/smoke2.json
    torch 2.15.0+cu132 on CPU, 2 threads; batch 2; msclip counts from constants
    WARNING:root:No pretrained weights loaded for model 'ViT-B-32-quickgelu'. Model initialized randomly.

    == clip-b32: open_clip 3.3.0 ViT-B-32-quickgelu
    parameters: torch 151,277,313  msclip 151,277,313  (constants verified 2026-12-03)
    FLOPs/pair: 3 x forward = 3 x (vision 8.818 + text 5.888 + loss 0.000002) GFLOP = 44.116 GFLOP
    step: median 5889.28 ms (min 2501.38, max 9277.17; wall mean 5889.29) over 2 steps after 1 warm-up
    pairs/s: 0.3   peak memory: 3.40 GiB (process peak RSS)   MFU: n/a (no peak for this device)
    precision: fp32, AdamW fused=False, compiled=False, clip-grad=off, loss 1.9288

    == msclip-s-b32: pytorch_reference.py
    parameters: torch 132,408,001  msclip 132,408,001  (constants verified 2026-12-03)
    FLOPs/pair: 3 x forward = 3 x (vision 10.250 + text 13.191 + loss 0.000002) GFLOP = 70.325 GFLOP
    step: median 20459.91 ms (min 19184.40, max 21735.42; wall mean 20459.92) over 2 steps after 1 warm-up
    pairs/s: 0.1   peak memory: 3.49 GiB (process peak RSS)   MFU: n/a (no peak for this device)
    precision: fp32, AdamW fused=False, compiled=False, clip-grad=off, loss 1.3359

    == msclip-s-b16: pytorch_reference.py
    parameters: torch 132,503,617  msclip 132,503,617  (constants verified 2026-12-03)
    FLOPs/pair: 3 x forward = 3 x (vision 36.317 + text 13.191 + loss 0.000002) GFLOP = 148.527 GFLOP
    step: median 18274.17 ms (min 18190.87, max 18357.48; wall mean 18274.18) over 2 steps after 1 warm-up
    pairs/s: 0.1   peak memory: 3.74 GiB (process peak RSS)   MFU: n/a (no peak for this device)
    precision: fp32, AdamW fused=False, compiled=False, clip-grad=off, loss 0.9535

    == oner-b32: pytorch_reference.py
    parameters: torch 125,853,697  msclip 125,853,697  (constants verified 2026-12-03)
    FLOPs/pair: 3 x forward = 3 x (vision 8.818 + text 13.191 + loss 0.000002) GFLOP = 66.027 GFLOP
    step: median 2238.67 ms (min 1301.04, max 3176.29; wall mean 2238.67) over 2 steps after 1 warm-up
    pairs/s: 0.9   peak memory: 3.74 GiB (process peak RSS)   MFU: n/a (no peak for this device)
    precision: fp32, AdamW fused=False, compiled=False, clip-grad=off, loss 0.0047

    model          implementation                           params    ms/step    pairs/s    MFU
    clip-b32       open_clip 3.3.0 ViT-B-32-quickgelu     151,277,313   5889.28        0.3    n/a
    msclip-s-b32   pytorch_reference.py                   132,408,001  20459.91        0.1    n/a
    msclip-s-b16   pytorch_reference.py                   132,503,617  18274.17        0.1    n/a
    oner-b32       pytorch_reference.py                   125,853,697   2238.67        0.9    n/a
    wrote /tmp/smoke2.json
"""

import argparse
import datetime
import gc
import json
import math
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# `msclip params --preset NAME` totals, read with the binary built from commit 0c1a38a on
# 2026-12-03; used only when no msclip binary is found.
MSCLIP_PARAMS = {
    "clip-b32": 151_277_313,
    "msclip-s-b32": 132_408_001,
    "msclip-s-b16": 132_503_617,
    "oner-b32": 125_853_697,
}

# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, matched against the device name.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0}

# Captions are short, like the shapes world's: this many tokens, SOT and EOT included.
CAPTION_TOKENS = (6, 24)

STEM_CHANNELS = (48, 96, 192, 384, 768)
LATERAL_LAYERS = (2, 4, 6, 8, 10)


@dataclass(frozen=True)
class Preset:
    name: str
    sharing: str  # "none" (two towers), "attn+mlp" (MS-CLIP) or "all" (single tower)
    text_width: int = 768
    text_heads: int = 12
    patch: int = 32  # patchify stem; unused when stem_strides is set
    stem_strides: tuple = ()  # MS-CLIP's early-specialisation conv stem (replaces visual layer 0)
    branch_strides: tuple = ()  # MS-CLIP-S's parallel conv branch
    ln_eps: float = 1e-12
    logit_scale_init: float = 1.0
    image_size: int = 224
    width: int = 768
    heads: int = 12
    layers: int = 12  # per tower, the conv stem counted as visual layer 0
    context: int = 77
    vocab: int = 49408
    embed: int = 512

    @property
    def grid(self):
        stride = 2 * math.prod(self.stem_strides) if self.stem_strides else self.patch
        return self.image_size // stride

    @property
    def first_block(self):
        """Index of the first visual transformer block: the conv stem takes block 0's place."""
        return 1 if self.stem_strides else 0


PRESETS = {
    "clip-b32": Preset(
        "clip-b32", "none", text_width=512, text_heads=8, ln_eps=1e-5, logit_scale_init=math.log(1 / 0.07)
    ),
    "msclip-s-b32": Preset("msclip-s-b32", "attn+mlp", stem_strides=(2, 2, 2, 2), branch_strides=(2, 2, 2, 2, 2)),
    "msclip-s-b16": Preset("msclip-s-b16", "attn+mlp", stem_strides=(2, 2, 2, 1), branch_strides=(2, 2, 2, 2, 1)),
    "oner-b32": Preset("oner-b32", "all"),
}


# ----------------------------------------------------------------------------------------------
# Model


class AttnMlp(nn.Module):
    """The weights MS-CLIP shares between the modalities: QKV and output projections, MLP."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)
        self.c_fc = nn.Linear(width, 4 * width)
        self.c_proj = nn.Linear(4 * width, width)

    def attention(self, x, causal):
        b, n, d = x.shape
        q, k, v = self.in_proj(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(o.transpose(1, 2).reshape(b, n, d))

    def mlp(self, x):
        h = self.c_fc(x)
        return self.c_proj(h * torch.sigmoid(1.702 * h))  # QuickGELU


class Block(nn.Module):
    """Pre-norm transformer block; its LayerNorms are its own, its AttnMlp may be shared."""

    def __init__(self, weights, width, eps):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.w = weights

    def forward(self, x, causal):
        x = x + self.w.attention(self.ln_1(x), causal)
        return x + self.w.mlp(self.ln_2(x))


class Head(nn.Module):
    """Final LayerNorm and bias-free projection of the pooled token."""

    def __init__(self, width, embed, eps):
        super().__init__()
        self.ln = nn.LayerNorm(width, eps=eps)
        self.proj = nn.Parameter(torch.randn(width, embed) * width**-0.5)

    def forward(self, x):
        return self.ln(x) @ self.proj


def conv_bn(cin, cout, k, stride, eps, groups=1, padding=None):
    padding = k // 2 if padding is None else padding
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=False), nn.BatchNorm2d(cout, eps=eps)
    )


class ConvStem(nn.Module):
    """Early specialisation: conv3x3/2 + BN + ReLU, one residual basic block per stride
    (a 3x3 conv + BN beside a 1x1 projection + BN, summed, ReLU), then a 1x1 conv."""

    def __init__(self, strides, width):
        super().__init__()
        c = STEM_CHANNELS
        self.first = conv_bn(3, c[0], 3, 2, 1e-5)
        self.blocks = nn.ModuleList(
            nn.ModuleList([conv_bn(c[i], c[i + 1], 3, s, 1e-5), conv_bn(c[i], c[i + 1], 1, s, 1e-5)])
            for i, s in enumerate(strides)
        )
        self.last = nn.Conv2d(c[-1], width, 1, bias=False)

    def forward(self, x):
        x = F.relu(self.first(x))
        for main, skip in self.blocks:
            x = F.relu(main(x) + skip(x))
        return self.last(x)


class BranchBlock(nn.Module):
    """A parallel-branch stage after the first: a bottleneck residual block (1x1, 3x3/stride,
    1x1 at half the output channels, beside a strided 1x1 projection), BN eps 1e-6."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        mid = cout // 2
        self.body = nn.Sequential(
            conv_bn(cin, mid, 1, 1, 1e-6),
            nn.ReLU(),
            conv_bn(mid, mid, 3, stride, 1e-6),
            nn.ReLU(),
            conv_bn(mid, cout, 1, 1, 1e-6),
        )
        self.skip = conv_bn(cin, cout, 1, stride, 1e-6)

    def forward(self, x):
        return F.relu(self.body(x) + self.skip(x))


class LateralAdapter(nn.Module):
    """Fuses a branch stage into the trunk. The branch map is brought to the token grid by a
    depthwise conv (kernel = stride) + BN and lifted to the width by a 1x1 conv; the trunk's
    grid tokens go through a depthwise 3x3 + BN; the sum (and twice the CLS token, whose
    lateral slot is the CLS token itself) is layer-normed and *replaces* the residual stream."""

    def __init__(self, channels, side, grid, width, eps):
        super().__init__()
        k = side // grid
        self.down = conv_bn(channels, channels, k, k, 1e-5, groups=channels, padding=0)
        self.lift = nn.Conv2d(channels, width, 1, bias=False)
        self.trunk = conv_bn(width, width, 3, 1, 1e-5, groups=width)
        self.ln = nn.LayerNorm(width, eps=eps)
        self.grid = grid

    def forward(self, p, x):
        b, _, d = x.shape
        lateral = self.lift(self.down(p)).flatten(2).transpose(1, 2)
        grid = x[:, 1:].transpose(1, 2).reshape(b, d, self.grid, self.grid)
        grid = self.trunk(grid).flatten(2).transpose(1, 2)
        cls = x[:, :1]
        return self.ln(torch.cat([2 * cls, grid + lateral], dim=1))


class ParallelBranch(nn.Module):
    def __init__(self, preset):
        super().__init__()
        c, s = STEM_CHANNELS, preset.branch_strides
        stages = [nn.Sequential(conv_bn(3, c[0], 3, s[0], 1e-5), nn.ReLU())]
        stages += [BranchBlock(c[k - 1], c[k], s[k]) for k in range(1, len(s))]
        self.stages = nn.ModuleList(stages)
        sides = [preset.image_size // math.prod(s[: k + 1]) for k in range(len(s))]
        self.adapters = nn.ModuleList(
            LateralAdapter(c[k], sides[k], preset.grid, preset.width, preset.ln_eps) for k in range(len(s))
        )


class VisionTower(nn.Module):
    def __init__(self, preset, blocks, head):
        super().__init__()
        d = preset.width
        if preset.stem_strides:
            self.stem = ConvStem(preset.stem_strides, d)
        else:
            self.stem = nn.Conv2d(3, d, preset.patch, preset.patch, bias=False)
        self.cls = nn.Parameter(torch.randn(d) * d**-0.5)
        self.pos = nn.Parameter(torch.randn(preset.grid**2 + 1, d) * d**-0.5)
        self.ln_pre = nn.LayerNorm(d, eps=preset.ln_eps)
        self.branch = ParallelBranch(preset) if preset.branch_strides else None
        # Trunk block index -> branch stage fused in just before it.
        self.lateral = {layer: k for k, layer in enumerate(LATERAL_LAYERS)} if self.branch else {}
        self.blocks = blocks
        self.head = head
        self.first_block = preset.first_block

    def forward(self, images):
        x = self.stem(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], 1, -1), x], dim=1) + self.pos
        x = self.ln_pre(x)
        p = images  # the branch starts from the image and runs a stage at a time, lazily
        for index, block in enumerate(self.blocks, start=self.first_block):
            if index in self.lateral:
                k = self.lateral[index]
                p = self.branch.stages[k](p)
                x = self.branch.adapters[k](p, x)
            x = block(x, causal=False)
        return self.head(x[:, 0])


class TextTower(nn.Module):
    def __init__(self, preset, blocks, head):
        super().__init__()
        self.tok = nn.Embedding(preset.vocab, preset.text_width)
        self.pos = nn.Parameter(torch.randn(preset.context, preset.text_width) * 0.01)
        self.blocks = blocks
        self.head = head

    def forward(self, ids):
        x = self.tok(ids) + self.pos
        for block in self.blocks:
            x = block(x, causal=True)
        # EOT pooling: the first occurrence of the largest id in each row.
        return self.head(x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)])


class ContrastiveModel(nn.Module):
    """Two towers whose transformer weights are shared as the preset says. nn.Module
    registers a shared module once, so parameters() counts each shared tensor once."""

    def __init__(self, preset):
        super().__init__()
        p = preset
        v_blocks = [Block(AttnMlp(p.width, p.heads), p.width, p.ln_eps) for _ in range(p.first_block, p.layers)]
        if p.sharing == "all":
            # One tower: text layer i is visual layer i, LayerNorms included, and one head.
            t_blocks, v_head = v_blocks, Head(p.width, p.embed, p.ln_eps)
            t_head = v_head
        else:
            # Text layers below the first visual block (MS-CLIP's unshared text layer 0) get
            # weights of their own; above it, MS-CLIP shares the AttnMlp of visual layer i.
            t_blocks = [
                Block(
                    v_blocks[i - p.first_block].w
                    if p.sharing == "attn+mlp" and i >= p.first_block
                    else AttnMlp(p.text_width, p.text_heads),
                    p.text_width,
                    p.ln_eps,
                )
                for i in range(p.layers)
            ]
            v_head, t_head = Head(p.width, p.embed, p.ln_eps), Head(p.text_width, p.embed, p.ln_eps)
        self.visual = VisionTower(p, nn.ModuleList(v_blocks), v_head)
        self.text = TextTower(p, nn.ModuleList(t_blocks), t_head)
        self.logit_scale = nn.Parameter(torch.tensor(p.logit_scale_init))

    # The same interface as open_clip's CLIP, so one loss module drives both.
    def encode_image(self, images, normalize=False):
        f = self.visual(images)
        return F.normalize(f, dim=-1) if normalize else f

    def encode_text(self, ids, normalize=False):
        f = self.text(ids)
        return F.normalize(f, dim=-1) if normalize else f


class ContrastiveLoss(nn.Module):
    """Forward of both towers and the symmetric InfoNCE loss: the unit that torch.compile gets."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images, ids):
        img = self.model.encode_image(images, normalize=True)
        txt = self.model.encode_text(ids, normalize=True)
        logits = self.model.logit_scale.exp() * img @ txt.T
        labels = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


# ----------------------------------------------------------------------------------------------
# Analytic FLOPs
#
# Forward FLOPs per image-text pair = 2 x (multiply-adds of every matmul and convolution):
#   transformer block over n tokens of width d: 24 n d^2 (QKV 6, out-proj 2, MLP 16) plus
#     attention QK^T and PV: 4 n^2 d (full, images) or 2 n (n+1) d (causal, text: the lower
#     triangle only);
#   conv: 2 (cin / groups) k^2 cout h_out w_out; head projections 2 d e; the logits 2 B e per pair.
# LayerNorm, BatchNorm, softmax, activations and the optimizer are not counted. The step is
# counted as 3 x forward (the backward computes gradients of both operands of each matmul).
# Text is counted at the full context the PyTorch models run (77 tokens), padding included.


def conv_flops(cin, cout, k, side_out, groups=1):
    return 2 * (cin // groups) * k * k * cout * side_out**2


def block_flops(n, d, causal):
    attention = 2 * n * (n + 1) * d if causal else 4 * n * n * d
    return 24 * n * d * d + attention


def forward_flops(preset, batch):
    """Forward FLOPs per pair: a dict of vision, text and loss."""
    p = preset
    n_img, d = p.grid**2 + 1, p.width
    if p.stem_strides:
        side, c = p.image_size // 2, STEM_CHANNELS
        stem = conv_flops(3, c[0], 3, side)
        for i, s in enumerate(p.stem_strides):
            side //= s
            stem += conv_flops(c[i], c[i + 1], 3, side) + conv_flops(c[i], c[i + 1], 1, side)
        stem += conv_flops(c[-1], d, 1, p.grid)
    else:
        stem = conv_flops(3, d, p.patch, p.grid)
    branch = 0
    if p.branch_strides:
        side, c = p.image_size, STEM_CHANNELS
        for k, s in enumerate(p.branch_strides):
            side_in, side = side, side // s
            if k == 0:
                branch += conv_flops(3, c[0], 3, side)
            else:
                mid = c[k] // 2
                branch += conv_flops(c[k - 1], mid, 1, side_in) + conv_flops(mid, mid, 3, side)
                branch += conv_flops(mid, c[k], 1, side) + conv_flops(c[k - 1], c[k], 1, side)
            kernel = side // p.grid
            branch += conv_flops(c[k], c[k], kernel, p.grid, groups=c[k]) + conv_flops(c[k], d, 1, p.grid)
            branch += conv_flops(d, d, 3, p.grid, groups=d)
    vision = stem + branch + (p.layers - p.first_block) * block_flops(n_img, d, False) + 2 * d * p.embed
    text = p.layers * block_flops(p.context, p.text_width, True) + 2 * p.text_width * p.embed
    return {"vision": vision, "text": text, "loss": 2 * batch * p.embed}


# ----------------------------------------------------------------------------------------------
# Harness


def msclip_params(preset_name, binary):
    """Our parameter count: from the msclip binary when there is one, else the table above."""
    if binary is None:
        return MSCLIP_PARAMS[preset_name], "constants verified 2026-12-03"
    out = subprocess.run([binary, "params", "--preset", preset_name], capture_output=True, text=True, check=True)
    match = re.search(r"^total\s+(\d+)", out.stdout, re.MULTILINE)
    if not match:
        sys.exit(f"error: cannot read a total from `{binary} params --preset {preset_name}`:\n{out.stdout}")
    return int(match.group(1)), binary


def find_msclip(explicit):
    if explicit:
        if not Path(explicit).is_file():
            sys.exit(f"error: --msclip {explicit}: no such file")
        return explicit
    built = Path(__file__).resolve().parent.parent / "target" / "release" / "msclip"
    return shutil.which("msclip") or (str(built) if built.is_file() else None)


def build_model(name, clip_impl, device):
    """The model and a label of its implementation."""
    if name == "clip-b32" and clip_impl in ("auto", "open_clip"):
        try:
            import open_clip
        except ImportError:
            if clip_impl == "open_clip":
                sys.exit("error: --clip-impl open_clip, but open_clip is not importable")
            print("note: open_clip is not importable; clip-b32 runs the plain-PyTorch CLIP B/32")
        else:
            model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None, device=device)
            return model, f"open_clip {open_clip.__version__} ViT-B-32-quickgelu"
    with device:  # initialise the weights where they will live
        return ContrastiveModel(PRESETS[name]), "pytorch_reference.py"


def synthetic_batch(preset, batch, device, generator):
    images = torch.randn(batch, 3, preset.image_size, preset.image_size, device=device, generator=generator)
    sot, eot = preset.vocab - 2, preset.vocab - 1
    lo, hi = CAPTION_TOKENS
    lengths = torch.randint(lo, hi + 1, (batch,), device=device, generator=generator)
    ids = torch.randint(1, sot, (batch, preset.context), device=device, generator=generator)
    positions = torch.arange(preset.context, device=device)
    ids[:, 0] = sot
    ids[positions >= lengths[:, None]] = 0
    ids[torch.arange(batch, device=device), lengths - 1] = eot
    return images, ids


def make_optimizer(model, device):
    # Weight decay on matrices and convs only, as open_clip excludes gains, biases and the scale.
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.2},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=5e-4, betas=(0.9, 0.98), eps=1e-6, fused=fused), fused


def run_model(name, args, device, binary):
    preset = PRESETS[name]
    torch.manual_seed(0)
    if args.compile:
        torch._dynamo.reset()
    model, impl = build_model(name, args.clip_impl, device)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    ours, source = msclip_params(name, binary)
    print(f"\n== {name}: {impl}")
    print(f"parameters: torch {params:,}  msclip {ours:,}  ({source})")
    if params != ours:
        sys.exit(f"error: {name}: the PyTorch model has {params:,} parameters, msclip {ours:,}")

    generator = torch.Generator(device=device).manual_seed(1)
    images, ids = synthetic_batch(preset, args.batch, device, generator)
    optimizer, fused = make_optimizer(model, device)
    loss_module = ContrastiveLoss(model)
    step_fn = torch.compile(loss_module) if args.compile else loss_module
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = step_fn(images, ids)
        loss.backward()
        if args.clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        return loss

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    compiled = args.compile
    for i in range(args.warmup):
        try:
            step()
        except Exception as e:  # torch.compile fails at the first call, not at torch.compile()
            if not (compiled and i == 0):
                raise
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
            print(f"note: torch.compile failed ({type(e).__name__}: {first_line}); running eager")
            compiled, step_fn = False, loss_module
            step()

    # CUDA: one event pair per step on the stream, read after the last step, so that timing
    # adds no host synchronisation inside the loop. CPU: wall clock per step.
    times_ms = []
    wall_start = time.perf_counter()
    if cuda:
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(args.steps)
        ]
        for start, end in events:
            start.record()
            loss = step()
            end.record()
        torch.cuda.synchronize()
        times_ms = [start.elapsed_time(end) for start, end in events]
    else:
        for _ in range(args.steps):
            t0 = time.perf_counter()
            loss = step()
            times_ms.append((time.perf_counter() - t0) * 1e3)
    wall_ms = (time.perf_counter() - wall_start) * 1e3 / args.steps
    final_loss = loss.item()
    if not math.isfinite(final_loss):
        sys.exit(f"error: {name}: the loss is {final_loss}")

    median_ms = statistics.median(times_ms)
    pairs_per_s = args.batch / (median_ms / 1e3)
    fwd = forward_flops(preset, args.batch)
    flops_per_pair = 3 * sum(fwd.values())
    if cuda:
        peak_mem = torch.cuda.max_memory_allocated()
        mem_text = f"{peak_mem / 2**30:.2f} GiB (torch.cuda.max_memory_allocated)"
    else:
        # ru_maxrss is in KiB on Linux and covers the whole process (earlier models too).
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        mem_text = f"{peak_mem / 2**30:.2f} GiB (process peak RSS)"
    peak_tflops = args.peak_tflops or peak_for(device)
    mfu = flops_per_pair * pairs_per_s / (peak_tflops * 1e12) if peak_tflops else None

    print(
        f"FLOPs/pair: 3 x forward = 3 x (vision {fwd['vision'] / 1e9:.3f} + text {fwd['text'] / 1e9:.3f} "
        f"+ loss {fwd['loss'] / 1e9:.6f}) GFLOP = {flops_per_pair / 1e9:.3f} GFLOP"
    )
    print(
        f"step: median {median_ms:.2f} ms (min {min(times_ms):.2f}, max {max(times_ms):.2f}; "
        f"wall mean {wall_ms:.2f}) over {args.steps} steps after {args.warmup} warm-up"
    )
    mfu_text = f"{mfu * 100:.1f}% of {peak_tflops:g} TFLOP/s" if mfu is not None else "n/a (no peak for this device)"
    print(f"pairs/s: {pairs_per_s:.1f}   peak memory: {mem_text}   MFU: {mfu_text}")
    print(
        f"precision: {'bf16 autocast' if cuda else 'fp32'}, AdamW fused={fused}, "
        f"compiled={compiled}, clip-grad={args.clip_grad or 'off'}, loss {final_loss:.4f}"
    )
    result = {
        "model": name,
        "implementation": impl,
        "params": params,
        "msclip_params": ours,
        "batch": args.batch,
        "step_ms_median": median_ms,
        "step_ms": times_ms,
        "wall_ms_mean": wall_ms,
        "pairs_per_s": pairs_per_s,
        "peak_memory_bytes": peak_mem,
        "flops_per_pair": flops_per_pair,
        "forward_flops_per_pair": fwd,
        "peak_tflops": peak_tflops,
        "mfu": mfu,
        "compiled": compiled,
        "fused_adamw": fused,
        "final_loss": final_loss,
    }
    return result


def peak_for(device):
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops for key, tflops in PEAK_BF16_TFLOPS.items() if key in name), None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="all", choices=[*PRESETS, "all"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--steps", type=int, default=20, help="timed steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the forward and loss")
    parser.add_argument("--clip-grad", type=float, default=0.0, help="clip the global gradient norm to this (0: off)")
    parser.add_argument("--clip-impl", default="auto", choices=["auto", "open_clip", "plain"],
                        help="clip-b32 from open_clip (auto: when importable) or the plain PyTorch model here")
    parser.add_argument("--peak-tflops", type=float, help="peak for MFU (default: H100/H200 989, by device name)")
    parser.add_argument("--msclip", help="msclip binary for our parameter counts (default: on PATH or target/release)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.batch < 2 or args.steps < 1 or args.warmup < 1:
        parser.error("need --batch >= 2, --steps >= 1 and --warmup >= 1")

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit("error: --device cuda, but torch sees no CUDA device")
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"CPU, {torch.get_num_threads()} threads"
    binary = find_msclip(args.msclip)
    print(f"torch {torch.__version__} on {device_name}; batch {args.batch}; msclip counts from {binary or 'constants'}")

    names = list(PRESETS) if args.model == "all" else [args.model]
    results = []
    for name in names:
        results.append(run_model(name, args, device, binary))
        # Free the last model, its optimizer state and any compiled graphs before the next.
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print("\nmodel          implementation                           params    ms/step    pairs/s    MFU")
    for r in results:
        mfu = f"{r['mfu'] * 100:5.1f}%" if r["mfu"] is not None else "   n/a"
        print(
            f"{r['model']:<14} {r['implementation'][:38]:<38} {r['params']:>11,} "
            f"{r['step_ms_median']:9.2f} {r['pairs_per_s']:10.1f} {mfu}"
        )
    if args.json:
        report = {
            "date": datetime.date.today().isoformat(),
            "torch": torch.__version__,
            "device": device_name,
            "args": vars(args),
            "results": results,
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
