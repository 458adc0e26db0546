"""Per-kernel device time from an Nsight Compute CSV: where a GPU step's time goes, kernel by
kernel, which `msclip bench step --trace` (one span per backend call) cannot say.

Produce the CSV on the GPU machine (one metric, so ncu needs no replay; caches and clocks left
as the step finds them):
    ncu --metrics gpu__time_duration.sum --cache-control none --clock-control none --csv \
        --log-file ncu.csv msclip bench step --device cuda --cuda-graph off --steps 1 --warmup 1 ...
Then:
    python3 scripts/kernel_times.py ncu.csv [--steps 3] [--top 30] [--json out.json]

--steps is how many identical steps the profiled run made (bench step: warm-up + timed + the
breakdown step), so the table reads per step. Kernels are grouped by name and launch shape;
cuBLASLt's kernels keep their long names, shortened in the table.
"""

import argparse
import collections
import csv
import json
import sys

# ncu 2025 writes "ns"; older versions spelled the units out.
UNIT_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3, "nsecond": 1e-6, "usecond": 1e-3, "msecond": 1.0, "second": 1e3}


def rows(path):
    """The CSV rows of the gpu__time_duration metric; ncu's own log lines are skipped."""
    with open(path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]
    for row in csv.DictReader(lines):
        if row.get("Metric Name") == "gpu__time_duration.sum":
            yield row


def duration_ms(row):
    unit = row["Metric Unit"]
    if unit not in UNIT_MS:
        raise SystemExit(f"error: unknown time unit {unit!r} in the CSV")
    return float(row["Metric Value"].replace(",", "")) * UNIT_MS[unit]


def kind(name):
    """The same kinds of op as `bench step`'s breakdown, guessed from the kernel's name."""
    lowered = name.lower()
    for prefix, label in [
        (("gemm", "xmma", "cutlass", "splitk", "sm90_", "sm80_", "cublas"), "gemm"),
        (("attention", "attn"), "attention"),
        (("layernorm", "ln_"), "layernorm"),
        (("im2col", "col2im", "bn_", "dwconv", "swap_outer"), "convolution"),
        (("infonce", "cross_entropy", "loss"), "loss"),
        (("adamw", "grad_sq", "grad_norm"), "optimizer"),
    ]:
        if any(p in lowered for p in prefix):
            return label
    return "elementwise/other"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv")
    parser.add_argument("--steps", type=int, default=1, help="identical steps in the profiled run")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--json")
    args = parser.parse_args()

    groups = collections.defaultdict(lambda: [0, 0.0])
    kinds = collections.defaultdict(float)
    for row in rows(args.csv):
        key = (row["Kernel Name"], row["Grid Size"], row["Block Size"])
        ms = duration_ms(row)
        groups[key][0] += 1
        groups[key][1] += ms
        kinds[kind(row["Kernel Name"])] += ms
    if not groups:
        sys.exit(f"error: no gpu__time_duration.sum rows in {args.csv}")
    total = sum(ms for _, ms in groups.values())
    per = 1.0 / args.steps
    print(f"{sum(n for n, _ in groups.values())} kernel launches, {total * per:.3f} ms of kernel time per step "
          f"(summed over {args.steps} step(s), divided by {args.steps})")
    print(f"{'kind':20s} {'ms/step':>9s} {'share':>6s}")
    for name, ms in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"{name:20s} {ms * per:9.3f} {100 * ms / total:5.1f}%")
    print(f"\n{'kernel':60s} {'grid':>16s} {'block':>12s} {'calls':>6s} {'ms/step':>9s} {'share':>6s}")
    ranked = sorted(groups.items(), key=lambda kv: -kv[1][1])
    for (name, grid, block), (calls, ms) in ranked[: args.top]:
        short = name if len(name) <= 60 else name[:57] + "..."
        print(f"{short:60s} {grid:>16s} {block:>12s} {calls * per:6.1f} {ms * per:9.3f} {100 * ms / total:5.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "steps": args.steps,
                    "ms_per_step": total * per,
                    "kinds": {k: v * per for k, v in kinds.items()},
                    "kernels": [
                        {"name": n, "grid": g, "block": b, "calls_per_step": c * per, "ms_per_step": ms * per}
                        for (n, g, b), (c, ms) in ranked
                    ],
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
