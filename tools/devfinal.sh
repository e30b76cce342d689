#!/usr/bin/env bash
# A version's closing run on the GPU machine, from the repository root, with devbin/bins.tgz
# (tools/devbin.sh) and .devicework/golden (a copy of ../shared/golden) carried: builds the
# kernels from the sources (tools/devrun.sh tests: every suite, the golden files, memcheck) and,
# while the call's time allows (BUDGET seconds, default 560), whole bench runs on those kernels.
# Few files come back from the machine, so $OUT ends with at most eight: moe.fatbin and
# manifest.txt (to commit), bench1.csv .. bench3.csv, summary.txt and logs.tgz (the rest); a
# script that adds files after it ends with tools/outpack.sh, which keeps the fatbin in reach.
#   [MS=1,2,4,8,...] bash tools/devfinal.sh   (MS: the bench batch sizes)
set -uo pipefail
. "$(dirname "$0")/clocks.sh"
OUT=${OUT:-/tmp/out}
t0=$(date +%s)
budget=${BUDGET:-560}
ls .devicework/golden/*.safetensors > /dev/null 2>&1 || { echo "no golden cases in .devicework/golden: carry it (cp -r ../shared/golden .devicework/golden)"; exit 1; }
mkdir -p "$OUT"
# The kernels first, and their fatbin and manifest straight into $OUT, so that they come back
# even if the tests run out of time (devrun.sh reuses $OUT/k).
mkdir -p "$OUT/k"
bash cudaops/kernels/build.sh "$OUT/k" > /dev/null 2>&1 || { tail -30 "$OUT/k/ptxas.log"; exit 1; }
cp "$OUT/k/moe.fatbin" "$OUT/k/manifest.txt" "$OUT/"
# devrun.sh archives $OUT's logs when it ends, so its own log is kept outside until then. The
# whole cudaops suite alone takes about 300 s on one GPU.
timeout $((budget - 100)) bash tools/devrun.sh tests > /tmp/devrun.log 2>&1 || echo "devrun.sh rc=$? (124: out of time)"
cp /tmp/devrun.log "$OUT/devrun.log"
tail -12 /tmp/devrun.log
# A devrun.sh cut short leaves its logs and $OUT/k loose: archive them (few files come back).
(cd "$OUT" && ls *.log k > /dev/null 2>&1 && tar czf logs-devrun.tgz --remove-files $(ls -d *.log k 2> /dev/null | grep -v '^devrun.log$')) 2> /dev/null
for i in 1 2 3; do
	# A bench run of the three shapes takes about 80 s.
	[ $(($(date +%s) - t0 + 100)) -lt "$budget" ] || break
	# The clock while it runs (a spread between runs may come from it: tools/clocks.sh).
	clocks_start "$OUT/clk$i.log"
	FP4MOE_FATBIN=$OUT/moe.fatbin timeout 100 /tmp/b/fp4moe bench --shapes gptoss120b,deepseekv3,qwen3-30b-a3b \
		--m "${MS:-1,8,64,512,4096,16384}" --routing uniform --min-time 100ms --csv "$OUT/bench$i.csv" > "$OUT/bench$i.log" 2>&1
	rc=$?
	clocks_stop
	echo "bench run $i rc=$rc $(grep -o 'copy [0-9]* GB/s' "$OUT/bench$i.log"), graph floor $(grep -o 'kernels [0-9.]* and [0-9.]* µs' "$OUT/bench$i.log"); $(clocks_summary "$OUT/clk$i.log")" | tee -a "$OUT/summary.txt"
done
cat "$OUT/bench1.log"
(cd "$OUT" && mkdir -p more && mv -f logs.tgz registers.txt *.log more/ 2> /dev/null; tar czf logs.tgz --remove-files more)
ls "$OUT"
