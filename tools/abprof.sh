#!/usr/bin/env bash
# On the GPU machine, after tools/abstage.sh (carry its AB directory): ncu of one kernel for each
# staged variant, side by side: its throughputs (speed of light, memory workload: L2 hits, DRAM,
# warp states) and its source-level warp-state samples for tools/ncu_stalls.py. Builds a
# variant's fatbin from its kernel sources unless an abrun.sh earlier in the same call did.
# KERNEL (default moe_gemm_wg4), SHAPE (default gptoss120b), M (default 4096), SKIP (default 4:
# launches of the kernel skipped before the sampled one; the wgmma GEMMs run twice a forward, so
# 4 samples GEMM1 and 5 GEMM2). Output: $OUT/sol-NAME.txt, $OUT/src-NAME.csv.gz. TIMES=1 also
# lists every kernel's device time over 16 launches of a forward ($OUT/times-NAME.csv), so that
# the stages' kernels (routing, scatter, gather, staging, activation, reduce) show one by one.
# CACHE=none profiles each kernel with the caches as the forward left them (ncu's default, all,
# flushes them before every profiled kernel, so L2 hits carried from kernel to kernel, such as
# the decode kernels' code and metadata, do not show).
#   KERNEL=moe_act_quant SHAPE=qwen3-30b-a3b M=1024 AB=.devicework/abx bash tools/abprof.sh main x
set -uo pipefail
OUT=${OUT:-/tmp/out}
AB=${AB:-.devicework/ab}
K=${KERNEL:-moe_gemm_wg4}
prof=(ncu --clock-control none --cache-control "${CACHE:-all}")
mkdir -p "$OUT"
for n in "$@"; do
	if [ ! -f /tmp/ab/$n/moe.fatbin ]; then
		mkdir -p /tmp/ab/$n/bin && tar xJf $AB/$n/bin.txz -C /tmp/ab/$n/bin
		(cd $AB/$n/kernels && bash build.sh /tmp/ab/$n > /dev/null 2>&1) || { echo "build $n failed"; continue; }
	fi
	export FP4MOE_FATBIN=/tmp/ab/$n/moe.fatbin
	# Without the graph floor's thousands of one-block launches (moe_reduce), the first kernels
	# are the layer's: the weight upload's, then the forwards'.
	run=(/tmp/ab/$n/bin/fp4moe bench --shapes "${SHAPE:-gptoss120b}" --m "${M:-4096}" --routing uniform --min-time 1ms --graph-floor=false)
	timeout 150 "${prof[@]}" --kernel-name "$K" --launch-skip "${SKIP:-4}" --launch-count 1 \
		--section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section LaunchStats --section Occupancy \
		"${run[@]}" > "$OUT/sol-$n.txt" 2>&1
	timeout 200 "${prof[@]}" --kernel-name "$K" --launch-skip "${SKIP:-4}" --launch-count 1 \
		--section SourceCounters --section WarpStateStats --page source --print-source sass --csv \
		"${run[@]}" > "$OUT/src-$n.csv" 2>&1
	gzip -f "$OUT/src-$n.csv"
	if [ "${TIMES:-0}" = 1 ]; then
		timeout 120 "${prof[@]}" --metrics gpu__time_duration.sum --launch-skip 40 --launch-count 16 --csv \
			"${run[@]}" > "$OUT/times-$n.csv" 2>&1
		echo "== $n kernel times (in the unit ncu gives)"
		grep -E '"gpu__time_duration.sum"' "$OUT/times-$n.csv" | awk -F'","' '{print $5, $NF}' | tr -d '"' | cut -c1-90
	fi
	echo "== $n ($K, ${SHAPE:-gptoss120b} M=${M:-4096})"
	grep -E "Duration|DRAM Throughput|L2 Hit Rate|Compute \(SM\) Throughput|Registers Per Thread|Achieved Occupancy|Warp Cycles Per Issued" "$OUT/sol-$n.txt"
done
