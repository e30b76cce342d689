#!/usr/bin/env bash
# On the GPU machine, with .devicework/ab (tools/abstage.sh) and .devicework/golden (a copy of
# ../shared/golden) carried: builds every variant's fatbin from its own kernel sources (in
# parallel), then runs every variant's cudaops tests side by side (TESTRE, default the
# conformance suite with the golden cases, against-native, decode, wgmma, poison, device-forward,
# weight-layout and output-digest tests, the digests then compared with the first variant's;
# PAR=0 runs them one after another, as TestMemoryStable needs: it compares the whole device's
# free memory, which the other variants' tests move), then, one at a time, the bench of
# each variant whose tests passed (SHAPES, MS, MIN, GEMM, ROUTING (default uniform), BENCH_ARGS: more bench flags, e.g.
# "--input float"; CSV per variant under $OUT). NOTEST="a b"
# skips the tests of variants a and b; TTIME (default 300) limits each variant's tests, in
# seconds. Prints one table at the end, rows of all variants side by side, the same relative to
# the first variant (tools/abpivot.py), and each variant's register report.
#   MS=1,64,4096 bash tools/abrun.sh main wide
set -uo pipefail
. "$(dirname "$0")/clocks.sh"
OUT=${OUT:-/tmp/out}
AB=${AB:-.devicework/ab} # the staged variants (tools/abstage.sh; AB there too)
G=$PWD/.devicework/golden
# Without the golden cases TestConformance fails (and abrun skips that variant's bench): stop
# before spending the call.
ls "$G"/*.safetensors > /dev/null 2>&1 || { echo "no golden cases in $G: carry .devicework/golden (cp -r ../shared/golden .devicework/golden)"; exit 1; }
mkdir -p "$OUT"
echo "card: $(nvidia-smi --query-gpu=name --format=csv,noheader)"
for n in "$@"; do
	# A variant built earlier in the same call (a second abrun, e.g. with other BENCH_ARGS) is reused.
	[ -f /tmp/ab/$n/moe.fatbin ] && continue
	mkdir -p /tmp/ab/$n/bin && tar xJf $AB/$n/bin.txz -C /tmp/ab/$n/bin
	(cd $AB/$n/kernels && bash build.sh /tmp/ab/$n > /dev/null 2>&1 || echo "build $n failed") &
done
wait
: > "$OUT/summary.txt"
for n in "$@"; do
	awk '/Compiling entry function/ { f = $7; a = $9 } /Used [0-9]+ registers/ { if (a ~ /sm_90a/) print f, $5, $6 } /spill/ { if ($0 !~ / 0 bytes spill/) print "  " $0 } /C7513|serializ/ { print "  " $0 }' \
		/tmp/ab/$n/ptxas.log | sed "s/^/$n /" > "$OUT/reg-$n.txt"
done
# The variants' tests run side by side (they are small and not timed; the GPU is shared), then
# the benches one at a time.
t0=$(date +%s)
for n in "$@"; do
	case " ${NOTEST:-} " in *" $n "*) echo skipped > /tmp/ab/$n/rc ;; *)
	(cd cudaops && FP4MOE_FATBIN=/tmp/ab/$n/moe.fatbin FP4MOE_GOLDEN=$G timeout ${TTIME:-300} /tmp/ab/$n/bin/cudaops.test \
		-test.run "${TESTRE:-TestConformance|TestAgainstNative|TestDecode|TestWgmma|TestPoison|TestDeviceForward|TestWeightLayout|TestOutputDigests}" -test.v > "$OUT/test-$n.log" 2>&1
	echo $? > /tmp/ab/$n/rc) &
	[ "${PAR:-1}" = 1 ] || wait
	;; esac
done
wait
for n in "$@"; do
	rc=$(cat /tmp/ab/$n/rc)
	if [ "$rc" = skipped ]; then
		echo "$n tests skipped (NOTEST)"
	else
		echo "$n tests rc=$rc (all tests $(($(date +%s) - t0))s) $(grep -E '^(--- FAIL|FAIL|panic)' "$OUT/test-$n.log" | head -3 | tr '\n' ' ')"
	fi | tee -a "$OUT/summary.txt"
done
# TestOutputDigests (when TESTRE runs it) logs a hash of each case's output bits: a variant
# meant to keep every bit shows here whether it did, against the first variant.
first=$1
for n in "${@:2}"; do
	a=$(grep -o 'digest [a-z0-9-]* [0-9a-f]\{16\}' "$OUT/test-$first.log" 2> /dev/null | sort)
	[ -n "$a" ] || break
	b=$(grep -o 'digest [a-z0-9-]* [0-9a-f]\{16\}' "$OUT/test-$n.log" 2> /dev/null | sort)
	d=$(comm -3 <(echo "$a") <(echo "$b") | awk '{print $2}' | sort -u | tr '\n' ' ')
	echo "$n output digests against $first: $([ -z "$d" ] && echo "all $(echo "$a" | wc -l) the same" || echo "differ: $d")" | tee -a "$OUT/summary.txt"
done
# REPS=2 benches every variant a second time, in the reverse order (CSV ab-NAME.r2.csv), to see
# the spread between passes (an H200's power cap moves its clock). INTERLEAVE=1 takes the
# variants in turn for each shape (a process per variant and shape, the order rotated each pass)
# instead of each variant's whole bench in turn, so that a drift of the card's clock over the
# call falls on every variant alike; the same CSVs.
order="$*" rev=$(printf '%s\n' "$@" | tac | tr '\n' ' ')
bench1() { # NAME SUFFIX SHAPES TAG: one bench process, its CSV ab-NAME$SUFFIX$TAG.csv
	local n=$1 sfx=$2 tag=$4
	export FP4MOE_FATBIN=/tmp/ab/$n/moe.fatbin
	clocks_start "$OUT/clk-$n$sfx$tag.log"
	timeout 150 /tmp/ab/$n/bin/fp4moe bench --shapes "$3" --m "${MS:-1,8,64,512,4096}" --routing "${ROUTING:-uniform}" --gemm "${GEMM:-auto}" \
		--min-time "${MIN:-100ms}" ${BENCH_ARGS:-} --csv "$OUT/ab-$n$sfx$tag.csv" > "$OUT/bench-$n$sfx$tag.log" 2>&1
	local rc=$?
	clocks_stop
	echo "$n$sfx$tag bench rc=$rc $(grep -o 'copy [0-9]* GB/s' "$OUT/bench-$n$sfx$tag.log"), graph floor $(grep -o 'kernels [0-9.]* and [0-9.]* µs' "$OUT/bench-$n$sfx$tag.log"); $(clocks_summary "$OUT/clk-$n$sfx$tag.log")" | tee -a "$OUT/summary.txt"
}
ok() { case "$(cat /tmp/ab/$1/rc)" in 0 | skipped) return 0 ;; esac; return 1; }
shapes=${SHAPES:-gptoss120b,deepseekv3}
for r in $(seq 1 "${REPS:-1}"); do
	sfx=
	[ "$r" = 1 ] || sfx=.r$r
	if [ "${INTERLEAVE:-0}" = 1 ]; then
		set -- $order
		for k in $(seq 2 "$r"); do set -- "${@:2}" "$1"; done # the first variant differs each pass
		for s in ${shapes//,/ }; do
			for n in "$@"; do ok $n && bench1 $n "$sfx" $s ".$s"; done
			set -- "${@:2}" "$1" # and each shape
		done
		for n in $order; do # one CSV per variant and pass, as without INTERLEAVE
			ls "$OUT"/ab-$n$sfx.*.csv > /dev/null 2>&1 || continue
			awk 'FNR > 1 || NR == 1' "$OUT"/ab-$n$sfx.*.csv > "$OUT/ab-$n$sfx.csv.tmp" && rm "$OUT"/ab-$n$sfx.*.csv && mv "$OUT/ab-$n$sfx.csv.tmp" "$OUT/ab-$n$sfx.csv"
		done
		set -- $order
	else
		list=$order
		[ $((r % 2)) = 1 ] || list=$rev
		for n in $list; do ok $n && bench1 $n "$sfx" "$shapes" ""; done
	fi
done
for f in "$OUT"/ab-*.csv; do
	n=$(basename "$f" .csv) && n=${n#ab-}
	awk -F, -v v="$n" 'NR > 1 { printf "%-10s %-14s M=%-6s %9.1f us %7.1f TF %7.0f GB/s\n", v, $3, $9, $12, $16, $15 }' "$f"
done | sort -k2,2 -k3,3 -s | tee -a "$OUT/summary.txt"
# The same rows side by side, relative to the first variant's first pass.
python3 "$(dirname "$0")/abpivot.py" "$OUT" "$@" | tee -a "$OUT/summary.txt"
cat "$OUT"/reg-*.txt | grep -E "gemm|spill|serializ" | cut -c1-160
# Few files come back from the machine (eight at most): the variants' CSVs travel as one archive
# (ab.tgz) when there are more than four of them (three variants of two passes are six), the logs
# always.
[ "$(ls "$OUT"/ab-*.csv 2> /dev/null | wc -l)" -gt 4 ] && (cd "$OUT" && tar czf ab.tgz --remove-files ab-*.csv)
# An archive an earlier step of the same call left (tools/devrun.sh's) goes inside, under more/.
(cd "$OUT" && mkdir -p more && { mv -f logs.tgz more/ 2> /dev/null || true; } &&
	tar czf logs.tgz --remove-files test-*.log bench-*.log clk-*.log reg-*.txt more)
# Each variant's fatbin and manifest (to commit the winner's without rebuilding it).
(cd /tmp/ab && tar czf "$OUT/fatbins.tgz" $(for n in "$@"; do [ -f $n/moe.fatbin ] && echo $n/moe.fatbin $n/manifest.txt; done))
