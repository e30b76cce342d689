#!/usr/bin/env bash
# Register and spill report of the kernels of a branch (default: the work tree) without the GPU
# machine: the local nvcc writes PTX (its front end is older than the GPU machine's 13.0), the
# header is raised to sm_90a, and a newer ptxas (PTXAS, e.g. CUDA 12.4's from Debian trixie's
# nvidia-cuda-toolkit package, extracted) assembles it. Counts differ from nvcc 13.0's by a few
# registers; spills and ptxas's performance warnings (C75xx: wgmma serialised, setmaxnreg
# ignored) are what to look for.
# It first compiles the compute_90 PTX (no sm_90a features), which the fatbin also carries, so a
# name used outside the sm_90a-only code but defined inside it fails here too.
#   PTXAS=/tmp/c124/root/usr/bin/ptxas bash tools/localptxas.sh [BRANCH] [KERNEL-REGEX]
# Getting that ptxas on a Debian 12 machine (trixie's package, unpacked, not installed):
#   add a trixie source (Suites: trixie, Components: non-free) pinned at priority 50, apt-get update,
#   cd /tmp/c124 && apt-get download nvidia-cuda-toolkit/trixie && dpkg -x nvidia-cuda-toolkit_*.deb root
set -euo pipefail
PTXAS=${PTXAS:-ptxas}
d=$(mktemp -d)
if [ -n "${1:-}" ]; then git archive "$1" cudaops/kernels | tar x -C "$d"; src=$d/cudaops/kernels; else src=cudaops/kernels; fi
nvcc -ptx -arch=compute_90 -std=c++17 -O3 -o "$d/k90.ptx" "$src/moe.cu" || { echo "compute_90 PTX failed"; exit 1; }
nvcc -ptx -arch=sm_90 -std=c++17 -O3 -D__CUDA_ARCH_FEAT_SM90_ALL -o "$d/k.ptx" "$src/moe.cu"
sed -e 's/^\.version .*/.version 8.4/' -e 's/^\.target sm_90$/.target sm_90a/' "$d/k.ptx" > "$d/k90a.ptx"
"$PTXAS" -arch=sm_90a -O3 -v "$d/k90a.ptx" -o "$d/k.cubin" 2>&1 |
	awk -v re="${2:-.}" '/Compiling entry function/ { f = $7; keep = f ~ re } /C75[0-9][0-9]/ { print } keep && (/Used [0-9]+ registers|spill/) { print f, $0 }' | grep -v " 0 bytes spill stores" || true
# The hinted copies' miscompile (docs/perf.md v40): a memory descriptor in an odd uniform register
# (cuobjdump prints desc[UR1]) marks a copy that faulted at run time. Needs cuobjdump beside PTXAS.
cuobjdump=$(dirname "$PTXAS")/cuobjdump
if [ -x "$cuobjdump" ]; then
	"$cuobjdump" -sass "$d/k.cubin" | awk '/Function :/ { f = $3 } /desc\[UR[0-9]*[13579]\]/ { n[f]++ } END { for (k in n) print "WARNING: " k ": " n[k] " instructions with a descriptor in an odd uniform register" }'
fi
rm -rf "$d"
