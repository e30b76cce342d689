#!/usr/bin/env bash
# The compute-sanitizer tools over chosen cudaops tests on the GPU machine, from the repository
# root, with devbin/bins.tgz (tools/devbin.sh) and .devicework/golden carried; the binaries'
# embedded kernels unless FP4MOE_FATBIN names others. Each tool's log under $OUT, one summary
# line a tool. racecheck reports every hazard with its threads (--racecheck-report hazard), so
# that a warning can be told from a race between two threads.
#   TESTS='TestActivationWarps|TestDecodeRouteGrid' TOOLS="memcheck racecheck synccheck" bash tools/devsan.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
TESTS=${TESTS:-TestActivationWarps|TestDecodeRouteGrid|TestConformance/decode}
mkdir -p /tmp/b "$OUT"
tar xzf devbin/bins.tgz -C /tmp/b
G=$PWD/.devicework/golden
echo "binaries $(tr '\n' ' ' < /tmp/b/COMMIT)on $(nvidia-smi --query-gpu=name --format=csv,noheader); tests: $TESTS" | tee "$OUT/summary.txt"
for tool in ${TOOLS:-memcheck racecheck synccheck}; do
	extra=()
	[ "$tool" = racecheck ] && extra=(--racecheck-report hazard --print-limit 40)
	(cd cudaops && FP4MOE_GOLDEN=$G timeout "${TTIME:-150}" compute-sanitizer --tool "$tool" "${extra[@]}" \
		/tmp/b/cudaops.test -test.run "$TESTS" > "$OUT/$tool.log" 2>&1)
	echo "$tool rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/$tool.log" | tr '\n' ' ')$(grep -c '^--- FAIL' "$OUT/$tool.log") failed" | tee -a "$OUT/summary.txt"
done
