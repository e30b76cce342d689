#!/usr/bin/env bash
# Profiles on the GPU machine (devbin/bins.tgz carried, tools/devbin.sh): the stage breakdown at
# decode and prefill sizes, per-kernel device times of GPT-OSS forwards at M = 1 and 4096 (ncu),
# source-level warp-state samples of one GEMM kernel (GEMM1 of GPT-OSS M = 4096) for
# tools/ncu_stalls.py, and that kernel's throughputs (L2, DRAM, tensor pipe). Uses the binaries'
# embedded kernels unless FP4MOE_FATBIN is set. SM (default 4096) and SKIP (default 4: launches
# of the kernel skipped before the sampled one, e.g. 9 for GEMM2 of the decode kernel) pick the
# sampled launch.
# SHAPE (default gptoss120b) is the bench shape of the sampled launch; QUICK=1 runs only the two
# profiles of that launch (about 100 s less).
#   bash tools/devprof.sh [KERNEL]    # KERNEL: the kernel to sample, moe_gemm_wg4 by default
#   SM=1 SKIP=8 bash tools/devprof.sh moe_gemm_dec   # GEMM1 of GPT-OSS M = 1
#   QUICK=1 SHAPE=qwen3-30b-a3b SM=64 SKIP=9 bash tools/devprof.sh moe_gemm_dec1   # a GEMM2 of Qwen3 M = 64
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p /tmp/b "$OUT"
tar xzf devbin/bins.tgz -C /tmp/b
F=/tmp/b/fp4moe
SHAPE=${SHAPE:-gptoss120b}
[ "${QUICK:-0}" = 1 ] || {
timeout 150 $F bench --shapes gptoss120b,deepseekv3,qwen3-30b-a3b --m 1,64,4096 --routing uniform --min-time 50ms \
	--stages > "$OUT/stages.txt" 2>&1
for m in 1 4096; do
	timeout 120 ncu --clock-control none --metrics gpu__time_duration.sum --launch-skip 40 --launch-count 16 --csv \
		$F bench --shapes gptoss120b --m $m --routing uniform --min-time 1ms --graph-floor=false > "$OUT/ncu_times_m$m.csv" 2>&1
done
}
timeout 240 ncu --clock-control none --kernel-name "${1:-moe_gemm_wg4}" --launch-skip "${SKIP:-4}" --launch-count 1 \
	--section SourceCounters --section WarpStateStats --section SchedulerStats --page source --print-source sass --csv \
	$F bench --shapes "$SHAPE" --m "${SM:-4096}" --routing uniform --min-time 1ms --graph-floor=false > "$OUT/ncu_src.csv" 2>&1
gzip -f "$OUT/ncu_src.csv"
# Throughputs of that kernel against the device's peaks (speed of light, memory workload: L2 and
# DRAM bytes, tensor pipe), to tell whether it is bound by L2 (the staged tokens are read by
# every block of a tile) or by issue.
timeout 120 ncu --clock-control none --kernel-name "${1:-moe_gemm_wg4}" --launch-skip "${SKIP:-4}" --launch-count 1 \
	--section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
	$F bench --shapes "$SHAPE" --m "${SM:-4096}" --routing uniform --min-time 1ms --graph-floor=false > "$OUT/ncu_sol.txt" 2>&1
cat "$OUT/stages.txt" 2> /dev/null
grep -E "Throughput|Busy|Pipe|Hit Rate|Bandwidth|Duration" "$OUT/ncu_sol.txt" | head -40
[ "${QUICK:-0}" = 1 ] || for m in 1 4096; do echo "== ncu M=$m"; grep -E '"gpu__time_duration.sum"' "$OUT/ncu_times_m$m.csv" | awk -F'","' '{print $5, $NF}' | tr -d '"' | cut -c1-80; done
