#!/usr/bin/env bash
# Builds moe.fatbin (sm_90a SASS plus compute_90 PTX) from the kernel sources and writes
# manifest.txt: the SHA-256 of every source file (which .ci/check-fatbin.sh compares with the
# sources, so a stale fatbin fails CI), the nvcc version and the command. Needs nvcc >= 12.4
# (FP8 mma.sync); the GPU machine has 13.0. Usage: [MOE_DEFS=...] bash cudaops/kernels/build.sh [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")"
out=${1:-.}
NVCC=${NVCC:-nvcc}
flags=(-O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_90,code=compute_90 -Xptxas -v)
# MOE_DEFS: extra definitions for a build that is not committed, e.g. -DMOE_TRACE (the stage
# timeline, fp4moe bench --trace); the manifest's flags line then names them.
# shellcheck disable=SC2206
flags+=(${MOE_DEFS:-})
"$NVCC" "${flags[@]}" -fatbin -o "$out/moe.fatbin" moe.cu 2> "$out/ptxas.log" || { cat "$out/ptxas.log"; exit 1; }
{
	echo "# Sources of moe.fatbin (sha256), and how it was built. Regenerate with cudaops/kernels/build.sh."
	sha256sum $(ls *.cu *.cuh | sort)
	echo "# nvcc: $("$NVCC" --version | tail -n 1)"
	echo "# flags: ${flags[*]}"
} > "$out/manifest.txt"
