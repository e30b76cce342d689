#!/usr/bin/env bash
# Fails when the committed fatbin was not built from the committed kernel sources: every
# source's SHA-256 must match cudaops/kernels/manifest.txt, and every source must be listed.
set -euo pipefail
cd "$(dirname "$0")/../cudaops/kernels"
test -s moe.fatbin || { echo "cudaops/kernels/moe.fatbin is missing or empty"; exit 1; }
listed=$(grep -v '^#' manifest.txt | awk '{print $2}' | sort)
present=$(ls *.cu *.cuh | sort)
if [ "$listed" != "$present" ]; then
	echo "kernel sources and manifest differ:"; diff <(echo "$listed") <(echo "$present") || true; exit 1
fi
grep -v '^#' manifest.txt | sha256sum --check --quiet || { echo "moe.fatbin is stale: rebuild it with cudaops/kernels/build.sh on the GPU machine"; exit 1; }
! grep -q -- '-DMOE_TRACE' manifest.txt || { echo "moe.fatbin was built with MOE_TRACE (a timing build): rebuild it without MOE_DEFS"; exit 1; }
echo "fatbin manifest matches the kernel sources"
