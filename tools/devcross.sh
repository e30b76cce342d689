#!/usr/bin/env bash
# A closing run (tools/devfinal.sh, BUDGET 430 s) and then the crossover check: the wgmma GEMM
# forced at the batch sizes around autoDecodeRows, against the closing run's auto ones.
#   MS=... XMS=384,768,1024 bash tools/devcross.sh   (carry devbin and .devicework/golden)
set -uo pipefail
OUT=${OUT:-/tmp/out}
BUDGET=${BUDGET:-430} bash "$(dirname "$0")/devfinal.sh"
FP4MOE_FATBIN=$OUT/moe.fatbin timeout 100 /tmp/b/fp4moe bench --shapes gptoss120b,deepseekv3,qwen3-30b-a3b \
	--m "${XMS:-384,768,1024}" --routing uniform --min-time 100ms --gemm wgmma --csv "$OUT/wgmma.csv" > /tmp/wgmma.log 2>&1
echo "wgmma bench rc=$?" | tee -a "$OUT/summary.txt"
grep -E " us " /tmp/wgmma.log | head -12
