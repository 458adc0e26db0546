"""Writes the PyTorch reference state of DESIGN section 8, level 3, for MS-CLIP-S, into
tests/data/. `cargo test --test reference_state_msclip` checks that msclip's CPU backend (f64
and f32) and the emulated GPU backend reproduce it.

    pip install torch==2.15.0 safetensors
    python3 scripts/make_reference_state_msclip.py tests/data

PyTorch has no MS-CLIP class, and the original code (Hxyou/MSCLIP) needs torch 1.6-era APIs,
timm 0.3.2 and its yacs configs to build. So the model below is written here, in plain PyTorch,
from the specification (../shared/reference/msclip-architecture.md, itself read from the
original code), independently of msclip's Rust; its modules are laid out as the original's, so
its `state_dict()` has the original's names: the conv stem is visual transformer layer 0
(`EarlyconvRes`: conv1/bn1, resnet_stage.conv_i with conv1/bn1 and downsample.0/.1, last_conv),
the parallel branch `parallel_branch_v.k` (stage 0 conv/bn, then one `ConvResBlock` per stage
with conv1-3/bn1-3 and residual_conv/residual_bn), the lateral adapters
`parallel_lateral_adapter.k` (top2bottom_dw_conv.{conv,bn}, top2bottom_pw_conv.conv,
bottom_dw_conv.{conv,bn}, ln_adapt); text blocks 1.. are tied to the visual blocks of the same
index by assigning them the same attention in-projection, out-projection and MLP, as the
original does, so the state dict holds each shared tensor under both towers and a shared
parameter's gradient is the sum of both towers' uses. Checked against the original's counts
(msclip-architecture.md section 7): at B/32 the state dict has 521 tensors (36 of them
BatchNorm counters) and 210,366,049 floating-point values, and the model 132,408,001
parameters (132,503,617 at B/16).

It writes:

- reference_msclip_s.safetensors: the weights of a tiny MS-CLIP-S with ragged sizes (TINY
  below: 24 px images, width 32 with 2 heads, a conv stem to a 3 x 3 grid, three branch stages
  fused before blocks 1, 2 and 3, context 11, vocabulary 89, embeddings of 20), as
  `state_dict()` makes them (f32; both copies of each shared tensor; the BatchNorm counters),
  saved as a training checkpoint would be (wrapped under "state_dict", names prefixed "module.")
  and converted by scripts/convert_msclip_pth.py, so the converter and msclip's importer are
  both on the path. The weights are drawn as the original initialises them, then every
  LayerNorm and BatchNorm affine, every bias and every running statistic is moved off its
  initial value (a name map that swapped two of them would otherwise go unseen).
- reference_msclip_s_state.safetensors: the inputs (normalised images; captions of 11, 4, 7
  and 2 tokens and one of 11 cut before its EOT, which pools at SOT as the original's argmax
  does) and, in float64, the image and text features in eval mode (BatchNorm on its running
  statistics), the symmetric InfoNCE loss in train mode (batch statistics; exp(logit_scale),
  no clamp), the gradient of every parameter (`grad/` + the original's name, shared ones by
  their visual name), the running statistics after that forward (`running/` + name), and the
  losses after each of three torch.optim.AdamW steps (lr 1e-3, betas 0.9/0.98, eps 1e-6; the
  shared weights at half the learning rate with weight decay 0.2, the other matrices and
  convs with 0.05, vectors and the logit scale with none).
- msclip_original_shapes_b32.json, msclip_original_shapes_b16.json: every name and shape of
  the state dict of MS-CLIP-S at B/32 and B/16 (built on the meta device, no memory), which the
  `msclip-s-b32` and `msclip-s-b16` presets must match one to one.
"""

import json
import math
import sys
from collections import OrderedDict
from pathlib import Path
from tempfile import TemporaryDirectory

import torch
import torch.nn.functional as F
from torch import nn

from convert_msclip_pth import convert
from reference_io import save_if_changed

TINY = {
    "width": 32,
    "heads": 2,
    "layers": 4,
    "image_size": 24,
    "stem_strides": [2, 2, 1, 1],
    "branch_strides": [2, 2, 2],
    "lateral_layers": [1, 2, 3],
    "embed_dim": 20,
    "context": 11,
    "vocab": 89,
}
B32 = {
    "width": 768,
    "heads": 12,
    "layers": 12,
    "image_size": 224,
    "stem_strides": [2, 2, 2, 2],
    "branch_strides": [2, 2, 2, 2, 2],
    "lateral_layers": [2, 4, 6, 8, 10],
    "embed_dim": 512,
    "context": 77,
    "vocab": 49408,
}
B16 = {**B32, "stem_strides": [2, 2, 2, 1], "branch_strides": [2, 2, 2, 2, 1]}
BATCH = 5
SOT, EOT = 87, 88  # the two largest ids, as in CLIP's vocabulary; 0 pads
CAPTION_LENGTHS = [11, 4, 7, 2]  # with SOT and EOT; 11 fills the context
ADAMW_STEPS = 3
LAYER_NORM_EPS = 1e-12
BOTTLENECK_BN_EPS = 1e-6  # the branch's ConvResBlocks; every other BatchNorm keeps 1e-5


def ladder(width):
    """The channels of the stem and the branch: width/16 doubling to the width."""
    return [width // 16, width // 8, width // 4, width // 2, width]


def conv(cin, cout, kernel, stride=1, groups=1, padding=None):
    padding = kernel // 2 if padding is None else padding
    return nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)


def tokens_to_map(x):
    """[b, 1 + g*g, w] tokens to the CLS token [b, 1, w] and the [b, w, g, g] grid."""
    b, n, w = x.shape
    g = math.isqrt(n - 1)
    return x[:, :1], x[:, 1:].transpose(1, 2).reshape(b, w, g, g)


def map_to_tokens(m):
    return m.flatten(2).transpose(1, 2)


class LayerNorm(nn.Module):
    """MS-CLIP's LayerNorm: eps 1e-12 inside the square root. (The original computes the
    statistics in float32 for half-precision inputs; here the inputs are float32 or float64.)"""

    def __init__(self, width):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        var = (x - mean).pow(2).mean(-1, keepdim=True)
        return self.weight * ((x - mean) / torch.sqrt(var + LAYER_NORM_EPS)) + self.bias


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head attention under nn.MultiheadAttention's parameter names, which the original's
    Attention_CUST keeps: q, k, v stacked in in_proj, q scaled after its bias."""

    def __init__(self, width, heads):
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        self.heads = heads

    def forward(self, x, causal):
        b, n, w = x.shape
        head = w // self.heads
        q, k, v = (
            t.reshape(b, n, self.heads, head).transpose(1, 2)
            for t in F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        )
        scores = (q * head**-0.5) @ k.transpose(-1, -2)
        if causal:
            scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        return self.out_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, w))


class Block(nn.Module):
    """ResidualAttentionBlock: pre-norm attention, then a QuickGELU MLP."""

    def __init__(self, width, heads):
        super().__init__()
        self.attn = Attention(width, heads)
        self.ln_1 = LayerNorm(width)
        mlp = [("c_fc", nn.Linear(width, 4 * width)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(4 * width, width))]
        self.mlp = nn.Sequential(OrderedDict(mlp))
        self.ln_2 = LayerNorm(width)

    def forward(self, x, causal):
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


class StemBlock(nn.Module):
    """ResBasicBlock_v0: one 3x3 conv + BN beside a projection shortcut, summed, ReLU."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = conv(cin, cout, 3, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.downsample = nn.Sequential(conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.bn1(self.conv1(x)) + self.downsample(x))


class ConvStem(nn.Module):
    """EarlyconvRes, visual layer 0: conv3x3/2 + BN + ReLU, four StemBlocks, a 1x1 conv."""

    def __init__(self, width, strides):
        super().__init__()
        channels = ladder(width)
        self.conv1 = conv(3, channels[0], 3, 2)
        self.bn1 = nn.BatchNorm2d(channels[0])
        blocks = [(f"conv_{i}", StemBlock(channels[i], channels[i + 1], s)) for i, s in enumerate(strides)]
        self.resnet_stage = nn.Sequential(OrderedDict(blocks))
        self.last_conv = conv(width, width, 1)

    def forward(self, images):
        return self.last_conv(self.resnet_stage(F.relu(self.bn1(self.conv1(images)))))


class Bottleneck(nn.Module):
    """ConvResBlock: 1x1 -> 3x3/stride -> 1x1 at half the output channels, projection shortcut."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        mid = cout // 2
        self.conv1, self.bn1 = conv(cin, mid, 1), nn.BatchNorm2d(mid, eps=BOTTLENECK_BN_EPS)
        self.conv2, self.bn2 = conv(mid, mid, 3, stride), nn.BatchNorm2d(mid, eps=BOTTLENECK_BN_EPS)
        self.conv3, self.bn3 = conv(mid, cout, 1), nn.BatchNorm2d(cout, eps=BOTTLENECK_BN_EPS)
        self.residual_conv = conv(cin, cout, 1, stride)
        self.residual_bn = nn.BatchNorm2d(cout, eps=BOTTLENECK_BN_EPS)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + self.residual_bn(self.residual_conv(x)))


class BranchStage(nn.Module):
    """Resnet_Stage of one ConvResBlock."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.resnet_stage = nn.Sequential(OrderedDict([("conv_0", Bottleneck(cin, cout, stride))]))

    def forward(self, x):
        return self.resnet_stage(x)


def first_branch_stage(cout, stride):
    return nn.Sequential(OrderedDict([("conv", conv(3, cout, 3, stride)), ("bn", nn.BatchNorm2d(cout)), ("relu", nn.ReLU())]))


class LateralAdapter(nn.Module):
    """Lateral_Adapter: the branch map downsampled (depthwise k x k, stride k, BN) and lifted to
    the width (1x1); the trunk's grid through a depthwise 3x3 + BN; the sum, with the CLS token
    in both, through a LayerNorm. It replaces the trunk's residual stream."""

    def __init__(self, channels, kernel, width):
        super().__init__()
        down = conv(channels, channels, kernel, kernel, groups=channels, padding=0)
        self.top2bottom_dw_conv = nn.Sequential(OrderedDict([("conv", down), ("bn", nn.BatchNorm2d(channels))]))
        self.top2bottom_pw_conv = nn.Sequential(OrderedDict([("conv", conv(channels, width, 1))]))
        mix = conv(width, width, 3, groups=width)
        self.bottom_dw_conv = nn.Sequential(OrderedDict([("conv", mix), ("bn", nn.BatchNorm2d(width))]))
        self.ln_adapt = LayerNorm(width)

    def forward(self, branch, x):
        cls, grid = tokens_to_map(x)
        lateral = map_to_tokens(self.top2bottom_pw_conv(self.top2bottom_dw_conv(branch)))
        mixed = map_to_tokens(self.bottom_dw_conv(grid))
        return self.ln_adapt(torch.cat([cls, mixed], 1) + torch.cat([cls, lateral], 1))


class VisualTrunk(nn.Module):
    """The original's visual.transformer: the stem as resblocks[0], the blocks after it, the
    parallel branch and its adapters."""

    def __init__(self, c):
        super().__init__()
        width = c["width"]
        blocks = [ConvStem(width, c["stem_strides"])] + [Block(width, c["heads"]) for _ in range(1, c["layers"])]
        self.resblocks = nn.ModuleList(blocks)
        channels = ladder(width)[: len(c["branch_strides"])]
        stages, adapters, side = [], [], c["image_size"]
        grid = c["image_size"] // (2 * math.prod(c["stem_strides"]))
        for k, (cout, stride) in enumerate(zip(channels, c["branch_strides"])):
            stages.append(first_branch_stage(cout, stride) if k == 0 else BranchStage(channels[k - 1], cout, stride))
            side = (side + stride - 1) // stride
            adapters.append(LateralAdapter(cout, side // grid, width))
        self.parallel_branch_v = nn.ModuleList(stages)
        self.parallel_lateral_adapter = nn.ModuleList(adapters)
        self.lateral_layers = c["lateral_layers"]


class Visual(nn.Module):
    def __init__(self, c):
        super().__init__()
        width, scale = c["width"], c["width"] ** -0.5
        grid = c["image_size"] // (2 * math.prod(c["stem_strides"]))
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = VisualTrunk(c)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, c["embed_dim"]))

    def forward(self, images):
        trunk = self.transformer
        patches = map_to_tokens(trunk.resblocks[0](images))
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, patches], 1) + self.positional_embedding)
        branch = images
        for layer in range(1, len(trunk.resblocks)):
            if layer in trunk.lateral_layers:
                k = trunk.lateral_layers.index(layer)
                branch = trunk.parallel_branch_v[k](branch)
                x = trunk.parallel_lateral_adapter[k](branch, x)
            x = trunk.resblocks[layer](x, causal=False)
        return self.ln_post(x[:, 0]) @ self.proj


class TextTrunk(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.resblocks = nn.ModuleList([Block(c["width"], c["heads"]) for _ in range(c["layers"])])


class MsClipS(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.visual = Visual(c)
        self.transformer = TextTrunk(c)
        # Text layer 0 is the text's own (early specialisation); layers 1.. take the visual
        # block's attention and MLP modules, as the original's SHARE_MODULES with N_LAYERS 1.
        for layer in range(1, c["layers"]):
            text, image = self.transformer.resblocks[layer], self.visual.transformer.resblocks[layer]
            text.attn.in_proj_weight = image.attn.in_proj_weight
            text.attn.in_proj_bias = image.attn.in_proj_bias
            text.attn.out_proj = image.attn.out_proj
            text.mlp = image.mlp
        self.token_embedding = nn.Embedding(c["vocab"], c["width"])
        self.positional_embedding = nn.Parameter(torch.empty(c["context"], c["width"]))
        self.ln_final = LayerNorm(c["width"])
        self.text_projection = nn.Parameter(torch.empty(c["width"], c["embed_dim"]))
        self.logit_scale = nn.Parameter(torch.ones([]))
        self.initialise()

    def initialise(self):
        """The original's: N(0, 0.02) for linears, convs, the text positions and projection (timm's
        trunc_normal_ with bounds +-2 is untruncated at that std), xavier-uniform in_proj,
        N(0, 1) token embeddings, zero biases; norms at 1 and 0."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            if isinstance(m, Attention):
                nn.init.xavier_uniform_(m.in_proj_weight)
        nn.init.normal_(self.positional_embedding, std=0.02)
        nn.init.normal_(self.text_projection, std=0.02)

    def encode_image(self, images):
        return F.normalize(self.visual(images), dim=-1)

    def encode_text(self, ids):
        x = self.token_embedding(ids) + self.positional_embedding
        for block in self.transformer.resblocks:
            x = block(x, causal=True)
        # The first occurrence of the largest id: EOT, or SOT for a caption cut before its EOT.
        pooled = x[torch.arange(x.shape[0]), ids.argmax(dim=-1)]
        return F.normalize(self.ln_final(pooled) @ self.text_projection, dim=-1)

    def loss(self, images, ids):
        image, text = self.encode_image(images), self.encode_text(ids)
        logits = self.logit_scale.exp() * image @ text.T
        labels = torch.arange(logits.shape[0])
        return image, text, (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def move_off_initial_values(model, generator):
    """Every vector parameter (norm affines, biases, the CLS embedding) and every BatchNorm
    running statistic gets a seeded offset, so no two of them hold equal values."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=generator))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=generator))


def shared_parameters(model):
    text = {id(p) for p in model.transformer.parameters()}
    return [p for p in model.visual.parameters() if id(p) in text]


def tokens(generator):
    rows = torch.zeros(BATCH, TINY["context"], dtype=torch.int64)
    for row, length in enumerate(CAPTION_LENGTHS):
        words = torch.randint(1, SOT, (length - 2,), generator=generator)
        rows[row, :length] = torch.cat([torch.tensor([SOT]), words, torch.tensor([EOT])])
    # The last caption was cut at the context: no EOT, so it pools at SOT.
    rows[-1, 0] = SOT
    rows[-1, 1:] = torch.randint(1, SOT, (TINY["context"] - 1,), generator=generator)
    return rows


def metadata():
    return {"config": json.dumps(TINY), "made_by": "scripts/make_reference_state_msclip.py", "torch": torch.__version__}


def write_weights(model, path):
    """The state dict as a training checkpoint holds it, through the converter."""
    wrapped = {"state_dict": {f"module.{name}": t for name, t in model.state_dict().items()}}
    with TemporaryDirectory() as folder:
        pth, converted = Path(folder) / "tiny.pth", Path(folder) / "tiny.safetensors"
        torch.save(wrapped, pth)
        convert(pth, converted)
        from safetensors.torch import load_file

        save_if_changed(load_file(converted), path, metadata())


def write_state(model, path):
    generator = torch.Generator().manual_seed(1)
    size = TINY["image_size"]
    images = torch.randn(BATCH, 3, size, size, generator=generator, dtype=torch.float64)
    ids = tokens(generator)
    model = model.double()

    model.eval()
    with torch.no_grad():
        image_features, text_features = model.encode_image(images), model.encode_text(ids)
    model.train()
    _, _, loss = model.loss(images, ids)
    loss.backward()
    state = {
        "images": images,
        "tokens": ids.to(torch.int32),
        "image_features": image_features,
        "text_features": text_features,
        "loss": loss.detach().reshape(1),
    }
    for name, p in model.named_parameters():
        state[f"grad/{name}"] = p.grad.detach().clone()
    for name, t in model.state_dict().items():
        if name.endswith(("running_mean", "running_var")):
            state[f"running/{name}"] = t.clone()

    shared = {id(p) for p in shared_parameters(model)}
    groups = [
        {"params": [p for p in model.parameters() if id(p) in shared], "weight_decay": 0.2, "lr": 5e-4},
        {"params": [p for p in model.parameters() if id(p) not in shared and p.ndim >= 2], "weight_decay": 0.05},
        {"params": [p for p in model.parameters() if id(p) not in shared and p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.98), eps=1e-6)
    losses = []
    for _ in range(ADAMW_STEPS):
        optimizer.step()
        optimizer.zero_grad()
        _, _, loss = model.loss(images, ids)
        loss.backward()
        losses.append(loss.item())
    state["adamw_losses"] = torch.tensor(losses, dtype=torch.float64)
    save_if_changed({k: v.contiguous() for k, v in state.items()}, path, metadata())
    print(f"  loss {state['loss'].item():.12f}, AdamW losses {losses}")


def write_shapes(config, path, parameters):
    with torch.device("meta"):
        model = MsClipS(config)
    count = sum(p.numel() for p in model.parameters())
    assert count == parameters, f"{path.name}: {count:,} parameters, the original has {parameters:,}"
    shapes = {name: list(t.shape) for name, t in model.state_dict().items()}
    path.write_text(json.dumps(shapes, indent=0) + "\n")
    return shapes


def main(out):
    out.mkdir(parents=True, exist_ok=True)
    b32 = write_shapes(B32, out / "msclip_original_shapes_b32.json", 132_408_001)
    # The original's state dict at B/32 (msclip-architecture.md section 7): 521 tensors, of
    # which the 36 BatchNorm counters are 0-d integers and the rest hold 210,366,049 values.
    assert len(b32) == 521, len(b32)
    counters = [name for name in b32 if name.endswith("num_batches_tracked")]
    assert len(counters) == 36 and all(b32[name] == [] for name in counters)
    assert sum(math.prod(shape) for name, shape in b32.items() if name not in counters) == 210_366_049
    write_shapes(B16, out / "msclip_original_shapes_b16.json", 132_503_617)

    torch.manual_seed(0)
    model = MsClipS(TINY)
    move_off_initial_values(model, torch.Generator().manual_seed(2))
    write_weights(model, out / "reference_msclip_s.safetensors")
    write_state(model, out / "reference_msclip_s_state.safetensors")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data"))
