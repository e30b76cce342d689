#!/usr/bin/env bash
# On the GPU machine, from the repository root: builds and runs condprobe (conditional graph
# nodes' cost in a replay) and the device-linked fatbin check; output under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
d=tools/condprobe; t=/tmp/condprobe; mkdir -p $t
arch="-gencode=arch=compute_90a,code=sm_90a"
nvcc -O2 -std=c++17 $arch -rdc=true $d/condprobe.cu -o $t/condprobe -lcudadevrt -lcuda > $OUT/build.log 2>&1 || { tail -40 $OUT/build.log; exit 1; }
(nvcc $arch -dc -rdc=true $d/set_tier.cu -o $t/set_tier.o && nvcc $arch -dlink -fatbin $t/set_tier.o -lcudadevrt -o $t/set_tier.fatbin) >> $OUT/build.log 2>&1 || echo "set_tier fatbin build failed: $(tail -5 $OUT/build.log)"
$t/condprobe $t/set_tier.fatbin 2>&1 | tee $OUT/condprobe.txt
