"""PyTorch's time for the kernels of benches/gpu_kernels.rs, same shapes, same GPU, same run.

Usage (on the GPU machine, after `cargo bench --bench gpu_kernels`):
    python3 benches/gpu_kernels_torch.py
Prints the same table (us, GB/s against the minimum bytes of each op) for eager PyTorch, whose
LayerNorm and element-wise kernels are the baseline msclip's fused kernels should beat.
"""

import torch
import torch.nn.functional as F

TOKENS, WIDTH = 12_800, 768
REPS = 50


def time_us(fn):
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(REPS):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / REPS


def main():
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        e = torch.tensor([], dtype=dtype).element_size()
        n, d = TOKENS, WIDTH
        act, stats = n * d * e, 2 * n * 4
        x = torch.randn(n, d, device="cuda", dtype=dtype, requires_grad=True)
        res = torch.randn(n, d, device="cuda", dtype=dtype)
        gamma = torch.randn(d, device="cuda", dtype=dtype, requires_grad=True)
        beta = torch.randn(d, device="cuda", dtype=dtype, requires_grad=True)
        dy = torch.randn(n, d, device="cuda", dtype=dtype)
        name = f"{n}x{d} {str(dtype).removeprefix('torch.')}"
        with torch.no_grad():
            rows.append((f"torch layer_norm fwd {name}", 2 * act + stats,
                         time_us(lambda: F.layer_norm(x, (d,), gamma, beta, 1e-5))))
            rows.append((f"torch add + layer_norm fwd {name}", 4 * act + stats,
                         time_us(lambda: F.layer_norm(x + res, (d,), gamma, beta, 1e-5))))
        y = F.layer_norm(x, (d,), gamma, beta, 1e-5)
        rows.append((f"torch layer_norm bwd {name}", 3 * act + stats,
                     time_us(lambda: torch.autograd.grad(y, (x, gamma, beta), dy, retain_graph=True))))
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    print(f"{'kernel':<58} {'us':>9} {'GB/s':>9}")
    for name, nbytes, us in rows:
        print(f"{name:<58} {us:>9.1} {nbytes / us / 1e3:>9.0}")
    print(f"{'kernel (matrix-bound)':<58} {'us':>9} {'TFLOP/s':>9}")
    for name, flops, us in compute_bound_rows():
        print(f"{name:<58} {us:>9.1} {flops / us / 1e6:>9.1}")


def compute_bound_rows():
    """SDPA and the naive InfoNCE (logits + two cross-entropies) at gpu_kernels.rs's shapes and
    FLOP counts (InfoNCE: 6 N^2 D, the logits and the two feature gradients), bf16."""
    rows = []
    for name, batch, length, heads, causal in (("B/32 vision", 256, 50, 12, False),
                                               ("B/16 vision", 64, 197, 12, False),
                                               ("text causal", 256, 77, 8, True)):
        q, k, v = (torch.randn(batch, heads, length, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        flops = (0.5 if causal else 1.0) * 4 * batch * heads * length * length * 64
        shape = f"{name} b{batch} L{length} h{heads} bf16"
        with torch.no_grad():
            rows.append((f"torch SDPA fwd {shape}", flops,
                         time_us(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))))
        dout = torch.randn_like(q)

        def fwd_bwd():
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            torch.autograd.grad(out, (q, k, v), dout)
        rows.append((f"torch SDPA fwd+bwd {shape}", 3.5 * flops, time_us(fwd_bwd)))
    for n in (4096, 16384, 65536):
        d = 512
        img = F.normalize(torch.randn(n, d, device="cuda", dtype=torch.bfloat16), dim=-1).requires_grad_()
        txt = F.normalize(torch.randn(n, d, device="cuda", dtype=torch.bfloat16), dim=-1).requires_grad_()
        labels = torch.arange(n, device="cuda")

        def naive():
            logits = 100.0 * img @ txt.T
            loss = (F.cross_entropy(logits.float(), labels) + F.cross_entropy(logits.T.float(), labels)) / 2
            torch.autograd.grad(loss, (img, txt))
        try:
            torch.cuda.reset_peak_memory_stats()
            us = time_us(naive)
            peak = torch.cuda.max_memory_allocated() >> 20
            rows.append((f"torch naive infonce fwd+bwd N{n} D{d} (peak {peak} MiB)", 6 * n * n * d, us))
        except torch.cuda.OutOfMemoryError:
            rows.append((f"torch naive infonce N{n} D{d}: out of memory", 6 * n * n * d, float("inf")))
            torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    main()
