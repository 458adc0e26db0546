"""The `tiny` preset (MS-CLIP with early specialisation) in PyTorch, for the CPU
training-step comparison with `cargo bench --bench train_step`.

Same architecture and shapes as src/model (checked by the parameter count it prints, which
must equal `msclip params --preset tiny`): 48 px images, residual conv stem 3->32->64->128->128
(strides 2,2,2,1) as visual layer 0, three transformer blocks of width 128 / 4 heads whose
attention and MLP weights are shared with text blocks 1-3, an unshared text block 0,
1024-token vocabulary, 32-token context, EOT pooling, 128-d embeddings, symmetric InfoNCE.
Batch 128, captions of 16 tokens (the text is trimmed to them, as msclip does), fp32,
forward + backward + AdamW, no data loading. Median of 10 steps after a warm-up.

Run on the same machine: `python3 benches/train_step_torch.py` (torch with 2 threads).
"""

import time

import torch
import torch.nn as nn
import torch.nn.functional as F

WIDTH, HEADS, LAYERS, EMBED, VOCAB, CONTEXT, IMAGE = 128, 4, 4, 128, 1024, 32, 48
BATCH, CAPTION_TOKENS, STEPS = 128, 16, 10


class ConvBn(nn.Sequential):
    def __init__(self, cin, cout, k, s):
        super().__init__(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout))


class Stem(nn.Module):
    def __init__(self, channels=(32, 64, 128, 128), strides=(2, 2, 1)):
        super().__init__()
        self.first = ConvBn(3, channels[0], 3, 2)
        self.blocks = nn.ModuleList(
            nn.ModuleList([ConvBn(channels[i], channels[i + 1], 3, s), ConvBn(channels[i], channels[i + 1], 1, s)])
            for i, s in enumerate(strides)
        )
        self.last = nn.Conv2d(channels[-1], WIDTH, 1, bias=False)

    def forward(self, x):
        x = F.relu(self.first(x))
        for main, skip in self.blocks:
            x = F.relu(main(x) + skip(x))
        return self.last(x)


class AttnMlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.in_proj = nn.Linear(WIDTH, 3 * WIDTH)
        self.out_proj = nn.Linear(WIDTH, WIDTH)
        self.c_fc = nn.Linear(WIDTH, 4 * WIDTH)
        self.c_proj = nn.Linear(4 * WIDTH, WIDTH)

    def attention(self, x, causal):
        b, n, _ = x.shape
        q, k, v = self.in_proj(x).view(b, n, 3, HEADS, WIDTH // HEADS).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(o.transpose(1, 2).reshape(b, n, WIDTH))

    def mlp(self, x):
        h = self.c_fc(x)
        return self.c_proj(h * torch.sigmoid(1.702 * h))


class Block(nn.Module):
    def __init__(self, weights):
        super().__init__()
        self.ln_1 = nn.LayerNorm(WIDTH, eps=1e-12)
        self.ln_2 = nn.LayerNorm(WIDTH, eps=1e-12)
        self.w = weights

    def forward(self, x, causal):
        x = x + self.w.attention(self.ln_1(x), causal)
        return x + self.w.mlp(self.ln_2(x))


class TinyMsClip(nn.Module):
    def __init__(self):
        super().__init__()
        shared = [AttnMlp() for _ in range(1, LAYERS)]
        self.stem = Stem()
        grid = IMAGE // 8
        self.cls = nn.Parameter(torch.randn(WIDTH) * WIDTH**-0.5)
        self.vpos = nn.Parameter(torch.randn(grid * grid + 1, WIDTH) * WIDTH**-0.5)
        self.ln_pre = nn.LayerNorm(WIDTH, eps=1e-12)
        self.vblocks = nn.ModuleList(Block(w) for w in shared)
        self.ln_post = nn.LayerNorm(WIDTH, eps=1e-12)
        self.vproj = nn.Parameter(torch.randn(WIDTH, EMBED) * WIDTH**-0.5)
        self.tok = nn.Embedding(VOCAB, WIDTH)
        self.tpos = nn.Parameter(torch.randn(CONTEXT, WIDTH) * 0.02)
        self.tblocks = nn.ModuleList([Block(AttnMlp())] + [Block(w) for w in shared])
        self.ln_final = nn.LayerNorm(WIDTH, eps=1e-12)
        self.tproj = nn.Parameter(torch.randn(WIDTH, EMBED) * 0.02)
        self.logit_scale = nn.Parameter(torch.tensor(2.6593))

    def encode_image(self, img):
        x = self.stem(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], 1, WIDTH), x], 1) + self.vpos
        x = self.ln_pre(x)
        for blk in self.vblocks:
            x = blk(x, False)
        return F.normalize(self.ln_post(x[:, 0]) @ self.vproj, dim=-1)

    def encode_text(self, ids):
        eot = ids.argmax(-1)
        n = int(eot.max()) + 1
        x = self.tok(ids[:, :n]) + self.tpos[:n]
        for blk in self.tblocks:
            x = blk(x, True)
        return F.normalize(self.ln_final(x[torch.arange(x.shape[0]), eot]) @ self.tproj, dim=-1)

    def forward(self, img, ids):
        i, t = self.encode_image(img), self.encode_text(ids)
        logits = self.logit_scale.exp() * i @ t.T
        labels = torch.arange(i.shape[0])
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def main():
    torch.manual_seed(0)
    model = TinyMsClip()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"params {sum(p.numel() for p in model.parameters())}")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    img = torch.randn(BATCH, 3, IMAGE, IMAGE)
    ids = torch.zeros(BATCH, CONTEXT, dtype=torch.long)
    ids[:, 0] = VOCAB - 2
    ids[:, 1:CAPTION_TOKENS - 1] = torch.randint(1, VOCAB - 2, (BATCH, CAPTION_TOKENS - 2))
    ids[:, CAPTION_TOKENS - 1] = VOCAB - 1
    times = []
    for _ in range(STEPS + 1):
        start = time.perf_counter()
        loss = model(img, ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    times = sorted(times[1:])
    median = times[len(times) // 2]
    print(f"tiny (torch)   {median * 1e3:8.1f} ms/step  {BATCH / median:7.1f} pairs/s")


if __name__ == "__main__":
    main()
