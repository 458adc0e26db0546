#!/usr/bin/env bash
# Static evidence for the tensor-core kernels (issue 6), from a build that ran nvcc:
#   - no kernel spills registers (ptxas report of build.rs), and
#   - every kernel that is meant to use the tensor cores has HMMA instructions in its sm_90 SASS.
#
#   scripts/check-sass.sh [OUT_DIR]
#
# OUT_DIR is the build script's output folder holding ptxas_report.txt and the *.fatbin images;
# by default the newest target/release/build/msclip-*/out that has them. cuobjdump comes from
# CUOBJDUMP, PATH, .cuda-toolchain/bin (scripts/install-cuda-toolchain.sh) or next to $NVCC.
# Prints one line per checked kernel and exits non-zero on the first class of failure found.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"

# Kernels whose products run on mma.sync: the attention tiles in both dtypes (f32 is staged as
# bf16) and InfoNCE's bf16 instantiations (its f32 path is fp32 SIMT by design).
tensor_core_kernel='^(attention_(fwd|bwd)_d[0-9]+_(f32|bf16)|infonce_(fwd|bwd)_bf16)$'

out="${1:-}"
if [[ -z "$out" ]]; then
    report="$(ls -t "$repo"/target/release/build/msclip-*/out/ptxas_report.txt 2>/dev/null | head -n 1 || true)"
    [[ -n "$report" ]] || { echo "error: no ptxas report under target/release; build with nvcc first" >&2; exit 2; }
    out="$(dirname "$report")"
fi
[[ -f "$out/ptxas_report.txt" ]] || { echo "error: $out/ptxas_report.txt is missing" >&2; exit 2; }

cuobjdump="${CUOBJDUMP:-$(command -v cuobjdump || true)}"
for candidate in "$repo/.cuda-toolchain/bin/cuobjdump" "$(dirname "${NVCC:-/nonexistent/nvcc}")/cuobjdump"; do
    [[ -n "$cuobjdump" ]] || { [[ -x "$candidate" ]] && cuobjdump="$candidate"; }
done
[[ -n "$cuobjdump" ]] || { echo "error: cuobjdump not found (scripts/install-cuda-toolchain.sh installs it)" >&2; exit 2; }

# 1. Spills: columns of the report are kernel, regs, smem, stack, spill stores, spill loads.
spilled="$(awk 'NF == 6 && $2 ~ /^[0-9]+$/ && ($5 > 0 || $6 > 0) { print $1 }' "$out/ptxas_report.txt")"
if [[ -n "$spilled" ]]; then
    echo "FAIL: kernels spill registers: $spilled" >&2
    exit 1
fi

# 2. HMMA per kernel, from every module's SASS.
status=0
checked=0
for fatbin in "$out"/*.fatbin; do
    while read -r kernel hmma; do
        [[ "$kernel" =~ $tensor_core_kernel ]] || continue
        regs="$(awk -v k="$kernel" '$1 == k { print $2 " regs, " $3 " B smem" }' "$out/ptxas_report.txt")"
        checked=$((checked + 1))
        if [[ "$hmma" -gt 0 ]]; then
            printf 'ok    %-28s %4d HMMA  %s\n' "$kernel" "$hmma" "$regs"
        else
            printf 'FAIL  %-28s    0 HMMA  %s\n' "$kernel" "$regs"
            status=1
        fi
    done < <("$cuobjdump" -sass "$fatbin" | awk '
        /Function :/ { if (name != "") print name, count; name = $NF; count = 0 }
        /HMMA/ { count++ }
        END { if (name != "") print name, count }')
done
if [[ "$checked" -eq 0 ]]; then
    echo "FAIL: no tensor-core kernel found in $out/*.fatbin" >&2
    exit 1
fi
echo "no spills in $out/ptxas_report.txt; $checked tensor-core kernels checked"
exit "$status"
