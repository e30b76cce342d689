#!/usr/bin/env bash
# The usual GPU-machine run, from the repository root, with devbin/bins.tgz (tools/devbin.sh)
# and .devicework/golden (a copy of ../shared/golden) carried: builds the kernels into $OUT/k
# and runs the binaries against them, logs under $OUT, a summary at the end.
#   bash tools/devrun.sh quick   # kernels, the cudaops suite without the slow tests, a short bench
#   bash tools/devrun.sh full    # every suite, golden check, memcheck, the whole bench as CSV
#   bash tools/devrun.sh tests   # full without the bench;  bash tools/devrun.sh bench: the bench alone
#   Kernel variants from several git refs: tools/abstage.sh and tools/abrun.sh.
set -uo pipefail
mode=${1:-quick}
OUT=${OUT:-/tmp/out}
mkdir -p /tmp/b "$OUT/k"
tar xzf devbin/bins.tgz -C /tmp/b
echo "binaries from $(cat /tmp/b/COMMIT | tr '\n' ' ')on $(nvidia-smi --query-gpu=name --format=csv,noheader)"
# Kernels already built into $OUT/k by an earlier step of the same call are reused.
# The bench mode runs the binaries' embedded kernels (commit the fatbin first) and builds none.
if [ "$mode" != bench ]; then
	[ -f "$OUT/k/moe.fatbin" ] || bash cudaops/kernels/build.sh "$OUT/k" > /dev/null || { tail -30 "$OUT/k/ptxas.log"; exit 1; }
	awk "/Compiling entry function/ { f = \$7; a = \$9 } /bytes stack frame/ { sp = \$0 } /Used [0-9]+ registers/ { if (a ~ /sm_90a/) print f, \$5, \$6, sp }" "$OUT/k/ptxas.log" > "$OUT/registers.txt"
	export FP4MOE_FATBIN=$OUT/k/moe.fatbin
fi
G=$PWD/.devicework/golden
# Without the golden cases TestConformance and the golden check fail: stop before spending the
# call.
ls "$G"/*.safetensors > /dev/null 2>&1 || { echo "no golden cases in $G: carry .devicework/golden (cp -r ../shared/golden .devicework/golden)"; exit 1; }
sum() { printf '%-10s %s\n' "$1" "$2" >> "$OUT/summary.txt"; }
: > "$OUT/summary.txt"
if [ "$mode" = quick ]; then
	(cd cudaops && FP4MOE_GOLDEN=$G timeout 300 /tmp/b/cudaops.test -test.run 'TestConformance|TestAgainstNative|TestDecode|TestWgmma|TestPoison|TestDeviceForward' > "$OUT/cudaops.log" 2>&1); sum cudaops "rc=$?"
	timeout 200 /tmp/b/fp4moe bench --shapes gptoss120b,deepseekv3 --m 1,64,4096 --routing uniform --min-time 100ms > "$OUT/bench.log" 2>&1; sum bench "rc=$?"
else
	[ "$mode" = bench ] || {
	(cd cudaops && FP4MOE_GOLDEN=$G timeout 400 /tmp/b/cudaops.test -test.v > "$OUT/cudaops.log" 2>&1); sum cudaops "rc=$?"
	(cd graph_test && FP4MOE_GOLDEN=$G timeout 200 /tmp/b/graph.test > "$OUT/graph.log" 2>&1); sum graph "rc=$?"
	(cd gptoss && timeout 200 /tmp/b/gptoss.test > "$OUT/gptoss.log" 2>&1); sum gptoss "rc=$?"
	timeout 100 /tmp/b/moe_block > "$OUT/moe_block.log" 2>&1; sum moe_block "rc=$?"
	timeout 200 /tmp/b/fp4moe check --backend cuda "$G"/*.safetensors testdata/cases/*.safetensors > "$OUT/check.log" 2>&1; sum check "rc=$? $(grep -c PASS "$OUT/check.log") PASS"
	(cd cudaops && FP4MOE_GOLDEN=$G timeout 240 compute-sanitizer --tool memcheck /tmp/b/cudaops.test -test.run 'TestWgmma$|TestDeviceForwardAndGraph|TestConformance/decode/golden' > "$OUT/memcheck.log" 2>&1); sum memcheck "rc=$? $(grep 'ERROR SUMMARY' "$OUT/memcheck.log")"
	}
	[ "$mode" = tests ] || {
	timeout 400 /tmp/b/fp4moe bench --routing uniform,zipf --min-time 100ms --csv "$OUT/bench.csv" > "$OUT/bench.log" 2>&1; sum bench "rc=$?"
	timeout 60 /tmp/b/fp4moe bench --shapes gptoss120b,deepseekv3 --m 4096 --routing uniform --min-time 50ms --stages >> "$OUT/bench.log" 2>&1; sum stages "rc=$?"
	}
fi
grep -E "^(--- FAIL|FAIL)" "$OUT/cudaops.log" | head -5
[ -f "$OUT/registers.txt" ] && cut -c1-140 "$OUT/registers.txt"
cat "$OUT/bench.log"
cat "$OUT/summary.txt"
# Few files come back from the machine: the logs travel as one archive, beside the fatbin, its
# manifest, the bench CSV, the register report and the summary.
[ -f "$OUT/k/moe.fatbin" ] && cp "$OUT/k/moe.fatbin" "$OUT/k/manifest.txt" "$OUT/"
(cd "$OUT" && tar czf logs.tgz --remove-files *.log k)
