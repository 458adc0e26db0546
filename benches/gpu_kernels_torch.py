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


if __name__ == "__main__":
    main()
