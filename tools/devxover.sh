#!/usr/bin/env bash
# The decode/wgmma crossover on this card: both GEMMs forced at the batch sizes around
# autoDecodeRows (16, 24, 28 and 32 routed rows an expert), then a closing run (tools/devfinal.sh)
# while BUDGET allows. Carry devbin and .devicework/golden.
#   BUDGET=... bash tools/devxover.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p /tmp/b "$OUT" && tar xzf devbin/bins.tgz -C /tmp/b
for g in decode wgmma; do
	FP4MOE_FATBIN=$PWD/cudaops/kernels/moe.fatbin timeout 100 /tmp/b/fp4moe bench --shapes gptoss120b,deepseekv3 --m 512,768,896,1024 \
		--routing uniform --min-time 100ms --gemm $g --csv "$OUT/x1-$g.csv" > /dev/null 2>&1
	FP4MOE_FATBIN=$PWD/cudaops/kernels/moe.fatbin timeout 100 /tmp/b/fp4moe bench --shapes qwen3-30b-a3b --m 256,384,448,512 \
		--routing uniform --min-time 100ms --gemm $g --csv "$OUT/x2-$g.csv" > /dev/null 2>&1
done
# One CSV: the first file's header, then every file's rows.
(cd "$OUT" && { head -1 x1-decode.csv; tail -q -n +2 x1-*.csv x2-*.csv; } > xover.csv && rm x1-*.csv x2-*.csv)
cut -d, -f1,3,9,12,17,21 "$OUT/xover.csv"
bash "$(dirname "$0")/devfinal.sh"
