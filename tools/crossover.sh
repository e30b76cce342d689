#!/usr/bin/env bash
# The crossover between the decode and wgmma GEMMs, on the GPU machine (devbin/bins.tgz carried,
# tools/devbin.sh): every shape at each M of MS timed with --gemm decode and with --gemm wgmma
# (ROUTING, uniform by default; the binaries' embedded kernels unless FP4MOE_FATBIN is set), then a table
# of both times, routed rows per expert and the faster kernel. GEMMAuto's threshold
# (autoDecodeRows in cudaops.go) should sit where the faster kernel changes.
#   MS=128,256,512 bash tools/crossover.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p /tmp/b "$OUT"
tar xzf devbin/bins.tgz -C /tmp/b
for g in decode wgmma; do
	timeout 240 /tmp/b/fp4moe bench --shapes "${SHAPES:-gptoss120b,deepseekv3,qwen3-30b-a3b}" --m "${MS:-64,128,192,256,384,512,768}" \
		--routing "${ROUTING:-uniform}" --gemm $g --min-time "${MIN:-100ms}" --csv "$OUT/xover-$g.csv" > "$OUT/xover-$g.log" 2>&1 || echo "$g bench failed"
done
# shape, M, rows per expert (M·topk/E), decode µs, wgmma µs, the faster.
join -t, <(awk -F, 'NR > 1 { print $3 "/" $9 "," $7 "," $6 "," $12 }' "$OUT/xover-decode.csv" | sort) \
	<(awk -F, 'NR > 1 { print $3 "/" $9 "," $12 }' "$OUT/xover-wgmma.csv" | sort) |
	awk -F, '{ split($1, k, "/"); printf "%-14s M=%-5s %5.1f rows/expert  decode %9.1f  wgmma %9.1f  %s\n", k[1], k[2], k[2] * $2 / $3, $4, $5, ($4 < $5 ? "decode" : "wgmma") }' |
	sort -k1,1 -k2.3n | tee "$OUT/crossover.txt"
