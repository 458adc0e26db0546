"""Per-kernel device time from an Nsight Compute CSV: where a GPU step's time goes, kernel by
kernel, which `msclip bench step --trace` (one span per backend call) cannot say; and, when the
CSV has them, each kernel's speed of light: its DRAM traffic and its throughput as a fraction
of the GPU's peak memory and compute throughput (what `msclip bench roofline` draws).

Produce the CSV on the GPU machine (caches and clocks left as the step finds them):
    ncu --metrics gpu__time_duration.sum --cache-control none --clock-control none --csv \
        --log-file ncu.csv msclip bench step --device cuda --cuda-graph off --steps 1 --warmup 1 ...
(one metric: no replay), or, for the speed of light, over one step's window of launches:
    ncu --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,SOL_METRICS \
        --launch-skip K --launch-count K --print-units base ... (SOL_METRICS: MEMORY_SOL, COMPUTE_SOL)
Then:
    python3 scripts/kernel_times.py ncu.csv [--steps 3] [--top 30] [--json out.json]

--steps is how many identical steps the profiled run made (bench step: warm-up + timed + the
breakdown step; 1 for a one-step window), so the table reads per step. Kernels are grouped by
name and launch shape; cuBLASLt's kernels keep their long names, shortened in the table.
"""

import argparse
import collections
import csv
import json
import sys

TIME = "gpu__time_duration.sum"
DRAM = ("dram__bytes_read.sum", "dram__bytes_write.sum")
# The two throughputs of Nsight Compute's "GPU Speed Of Light" section, in % of peak.
MEMORY_SOL = "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed"
COMPUTE_SOL = "sm__throughput.avg.pct_of_peak_sustained_elapsed"
# ncu 2025 writes "ns"; older versions spelled the units out; --print-units base keeps bytes
# in bytes, else ncu scales them.
UNITS = {
    "ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3,  # to milliseconds
    "nsecond": 1e-6, "usecond": 1e-3, "msecond": 1.0, "second": 1e3,
    "byte": 1.0, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "B": 1.0, "KB": 1e3, "MB": 1e6, "GB": 1e9,  # to bytes
    "%": 1.0,
}


def launches(path):
    """Each kernel launch of the CSV as (name, grid, block, {metric: value in ms, bytes or %});
    ncu's own log lines are skipped."""
    with open(path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]
    by_id = {}
    for row in csv.DictReader(lines):
        unit = row["Metric Unit"]
        if unit not in UNITS:
            raise SystemExit(f"error: unknown unit {unit!r} of {row['Metric Name']} in {path}")
        launch = by_id.setdefault(row["ID"], (row["Kernel Name"], row["Grid Size"], row["Block Size"], {}))
        launch[3][row["Metric Name"]] = float(row["Metric Value"].replace(",", "")) * UNITS[unit]
    return [launch for launch in by_id.values() if TIME in launch[3]]


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

    groups = collections.defaultdict(lambda: collections.defaultdict(float))
    kinds = collections.defaultdict(float)
    for name, grid, block, metrics in launches(args.csv):
        ms = metrics[TIME]
        g = groups[(name, grid, block)]
        g["calls"] += 1
        g["ms"] += ms
        if all(m in metrics for m in DRAM):
            g["dram_bytes"] += sum(metrics[m] for m in DRAM)
        for sol in (MEMORY_SOL, COMPUTE_SOL):
            if sol in metrics:  # time-weighted: a group's mean over its launches' time
                g[sol] += metrics[sol] * ms
        kinds[kind(name)] += ms
    if not groups:
        sys.exit(f"error: no gpu__time_duration.sum rows in {args.csv}")
    total = sum(g["ms"] for g in groups.values())
    per = 1.0 / args.steps
    print(f"{sum(g['calls'] for g in groups.values()):.0f} kernel launches, {total * per:.3f} ms of kernel time per step "
          f"(summed over {args.steps} step(s), divided by {args.steps})")
    print(f"{'kind':20s} {'ms/step':>9s} {'share':>6s}")
    for name, ms in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"{name:20s} {ms * per:9.3f} {100 * ms / total:5.1f}%")
    has_sol = any(g[MEMORY_SOL] > 0 or g[COMPUTE_SOL] > 0 for g in groups.values())
    sol_head = f" {'GB/s':>7s} {'mem%':>5s} {'sm%':>5s}" if has_sol else ""
    print(f"\n{'kernel':60s} {'grid':>16s} {'block':>12s} {'calls':>6s} {'ms/step':>9s} {'share':>6s}{sol_head}")
    ranked = sorted(groups.items(), key=lambda kv: -kv[1]["ms"])
    rows = []
    for (name, grid, block), g in ranked:
        row = {"name": name, "grid": grid, "block": block, "kind": kind(name),
               "calls_per_step": g["calls"] * per, "ms_per_step": g["ms"] * per}
        if has_sol:
            row.update({
                "dram_gb_per_s": g["dram_bytes"] / (g["ms"] * 1e-3) / 1e9,
                "memory_sol_percent": g[MEMORY_SOL] / g["ms"],
                "compute_sol_percent": g[COMPUTE_SOL] / g["ms"],
            })
        rows.append(row)
    for row in rows[: args.top]:
        name = row["name"]
        short = name if len(name) <= 60 else name[:57] + "..."
        sol = (f" {row['dram_gb_per_s']:7.0f} {row['memory_sol_percent']:5.1f} {row['compute_sol_percent']:5.1f}"
               if has_sol else "")
        print(f"{short:60s} {row['grid']:>16s} {row['block']:>12s} {row['calls_per_step']:6.1f} "
              f"{row['ms_per_step']:9.3f} {100 * row['ms_per_step'] * args.steps / total:5.1f}%{sol}")
    if args.json:
        with open(args.json, "w") as f:
            launch_count = sum(g["calls"] for g in groups.values())
            json.dump({"steps": args.steps, "ms_per_step": total * per, "launches_per_step": launch_count * per,
                       "kinds": {k: v * per for k, v in kinds.items()}, "kernels": rows}, f, indent=1)


if __name__ == "__main__":
    main()
