#!/usr/bin/env bash
# The decode path's stage timeline on the GPU machine, from the repository root, with
# devbin/bins.tgz (tools/devbin.sh) and .devicework/golden carried: builds the kernels twice from
# the sources, as committed (moe.fatbin and manifest.txt into $OUT, to commit when the sources
# changed) and with MOE_DEFS=-DMOE_TRACE (kept on the machine); runs TestTraceGraphs on both
# (the plain build must give ErrNoTrace) and the decode tests on the plain one; then
# `fp4moe bench --trace` on the traced build (FP8 input, and float input, where moe_prepare
# runs), and the same rows untraced for the timing the traced kernels' atomics change. With
# BLOCKS=1 the traced build also records every block (MOE_TRACE_BLOCKS) and the FP8 bench writes
# them to $OUT/blocks.csv (--trace-blocks).
#   [BLOCKS=1] MS=1,2,4,8 SHAPES=gptoss120b,deepseekv3,qwen3-30b-a3b bash tools/devtrace.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
MS=${MS:-1,2,4,8}
SHAPES=${SHAPES:-gptoss120b,deepseekv3,qwen3-30b-a3b}
mkdir -p "$OUT" /tmp/b /tmp/kt
tar xzf devbin/bins.tgz -C /tmp/b
G=$PWD/.devicework/golden
sum() { echo "$1 $2" | tee -a "$OUT/summary.txt"; }
echo "binaries $(cat /tmp/b/COMMIT | tr '\n' ' ')on $(nvidia-smi --query-gpu=name --format=csv,noheader)" | tee "$OUT/summary.txt"
bash cudaops/kernels/build.sh "$OUT" > /dev/null 2>&1 || { tail -30 "$OUT/ptxas.log"; exit 1; }
defs=-DMOE_TRACE blk=""
[ "${BLOCKS:-0}" = 1 ] && defs="-DMOE_TRACE -DMOE_TRACE_BLOCKS" blk="--trace-blocks $OUT/blocks.csv"
MOE_DEFS="$defs" bash cudaops/kernels/build.sh /tmp/kt > /dev/null 2>&1 || { tail -30 /tmp/kt/ptxas.log; exit 1; }
mkdir -p "$OUT/l"
(cd cudaops && FP4MOE_FATBIN=$OUT/moe.fatbin FP4MOE_GOLDEN=$G timeout 200 /tmp/b/cudaops.test -test.v \
	-test.run 'TestTraceGraphs|TestOpen|TestConformance|TestDecodePredictedTiles|TestDecodeScales|TestDecodeWideRows|TestLayoutCheck' > "$OUT/l/tests-plain.log" 2>&1)
sum "tests, plain kernels" "rc=$? $(grep -o 'ErrNoTrace as expected' "$OUT/l/tests-plain.log" | head -1)"
(cd cudaops && FP4MOE_FATBIN=/tmp/kt/moe.fatbin timeout 60 /tmp/b/cudaops.test -test.v -test.run 'TestTraceGraphs' > "$OUT/l/tests-trace.log" 2>&1)
sum "TestTraceGraphs, traced kernels" "rc=$?"
for k in plain trace trace-float; do
	f=$OUT/moe.fatbin args=""
	case $k in
	trace) f=/tmp/kt/moe.fatbin args="--trace 20 $blk" ;;
	trace-float) f=/tmp/kt/moe.fatbin args="--trace 20 --input float" ;;
	esac
	FP4MOE_FATBIN=$f timeout 150 /tmp/b/fp4moe bench --shapes "$SHAPES" --m "$MS" --routing uniform --min-time 100ms $args > "$OUT/bench-$k.txt" 2>&1
	sum "bench $k" "rc=$? $(grep -o 'copy [0-9]* GB/s' "$OUT/bench-$k.txt")"
done
(cd "$OUT" && tar czf logs.tgz --remove-files l ptxas.log)
cat "$OUT/bench-trace.txt"
