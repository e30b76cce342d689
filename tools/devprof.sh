#!/usr/bin/env bash
# Profiles on the GPU machine (devbin/bins.tgz carried, tools/devbin.sh): the stage breakdown at
# decode and prefill sizes, per-kernel device times of GPT-OSS forwards at M = 1 and 4096 (ncu),
# and source-level warp-state samples of one GEMM kernel (GEMM1 of GPT-OSS M = 4096) for
# tools/ncu_stalls.py. Uses the binaries' embedded kernels unless FP4MOE_FATBIN is set.
#   bash tools/devprof.sh [KERNEL]    # KERNEL: the kernel to sample, moe_gemm_wgb by default
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p /tmp/b "$OUT"
tar xzf devbin/bins.tgz -C /tmp/b
F=/tmp/b/fp4moe
timeout 150 $F bench --shapes gptoss120b,deepseekv3,qwen3-30b-a3b --m 1,64,4096 --routing uniform --min-time 50ms \
	--stages > "$OUT/stages.txt" 2>&1
for m in 1 4096; do
	timeout 120 ncu --clock-control none --metrics gpu__time_duration.sum --launch-skip 40 --launch-count 16 --csv \
		$F bench --shapes gptoss120b --m $m --routing uniform --min-time 1ms > "$OUT/ncu_times_m$m.csv" 2>&1
done
timeout 240 ncu --clock-control none --kernel-name "${1:-moe_gemm_wgb}" --launch-skip 4 --launch-count 1 \
	--section SourceCounters --section WarpStateStats --section SchedulerStats --page source --print-source sass --csv \
	$F bench --shapes gptoss120b --m 4096 --routing uniform --min-time 1ms > "$OUT/ncu_src.csv" 2>&1
gzip -f "$OUT/ncu_src.csv"
cat "$OUT/stages.txt"
for m in 1 4096; do echo "== ncu M=$m"; grep -E '"gpu__time_duration.sum"' "$OUT/ncu_times_m$m.csv" | awk -F'","' '{print $5, $NF}' | tr -d '"' | cut -c1-80; done
