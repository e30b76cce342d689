#!/usr/bin/env bash
# The crossover between the decode and wgmma GEMMs, on the GPU machine (devbin/bins.tgz carried,
# tools/devbin.sh): every shape at each M of MS timed with --gemm decode and with --gemm wgmma
# (ROUTING, uniform by default; the binaries' embedded kernels unless FP4MOE_FATBIN is set), in
# ROUNDS interleaved rounds (default 2), each process's first batch WARM tokens (default 16) that
# the table leaves out; then a table of both means, routed rows per expert and the faster kernel.
# At 12-16 rows an expert the decode GEMM's time for one plan differs between processes by up to
# 9 % on an H200 (docs/perf.md, "A check of the crossover tool"), so one round is not enough
# there. GEMMAuto's threshold (autoDecodeRows, autoDecodeRowsWide in cudaops.go) should sit
# where the faster kernel changes.
#   MS=128,256,512 bash tools/crossover.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p /tmp/b "$OUT"
tar xzf devbin/bins.tgz -C /tmp/b
# crossover_table DIR WARM: from DIR's xover-{decode,wgmma}-r*.csv, per shape and M (but the
# WARM-token rows): rows per expert (M·topk/E), the decode and wgmma means over the rounds, the
# faster.
crossover_table() {
	awk -F, -v warm="$2" '
		FNR == 1 { g = FILENAME; sub(/.*xover-/, "", g); sub(/-r[0-9]+\.csv$/, "", g); next }
		$9 == warm { next }
		{ k = $3 SUBSEP $9; rows[k] = $9 * $7 / $6; sum[k, g] += $12; n[k, g]++ }
		END {
			for (k in rows) {
				if (!n[k, "decode"] || !n[k, "wgmma"]) continue
				split(k, s, SUBSEP); d = sum[k, "decode"] / n[k, "decode"]; w = sum[k, "wgmma"] / n[k, "wgmma"]
				printf "%-16s M=%-5s %6.2f rows/expert  decode %9.1f  wgmma %9.1f  %s\n", s[1], s[2], rows[k], d, w, (d < w ? "decode" : "wgmma")
			}
		}' "$1"/xover-decode-r*.csv "$1"/xover-wgmma-r*.csv | sort -k1,1 -k2.3n
}

warm=${WARM:-16}
for r in $(seq "${ROUNDS:-2}"); do
	for g in decode wgmma; do
		timeout 240 /tmp/b/fp4moe bench --shapes "${SHAPES:-gptoss120b,deepseekv3,qwen3-30b-a3b}" --m "$warm,${MS:-64,128,192,256,384,512,768}" \
			--routing "${ROUTING:-uniform}" --gemm $g --min-time "${MIN:-100ms}" --csv "$OUT/xover-$g-r$r.csv" > "$OUT/xover-$g-r$r.log" 2>&1 || echo "$g round $r bench failed"
	done
done
crossover_table "$OUT" "$warm" | tee "$OUT/crossover.txt"
