#!/usr/bin/env bash
# Stages kernel/host variants for an A/B on the GPU machine: for each NAME=REF (a git ref, or
# "work" for the working tree) builds cudaops.test and fp4moe (-tags cudaops) from that tree and
# copies its kernel sources, into .devicework/ab/NAME/{bin.txz,kernels/} (ignored; carry
# .devicework/ab; AB=dir stages elsewhere, e.g. to keep two sets under the carry limit). Then on
# the GPU machine: bash tools/abrun.sh NAME... (with the same AB).
#   bash tools/abstage.sh main=main wide=next/wide-tiles mine=work
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
for spec in "$@"; do
	name=${spec%%=*} ref=${spec#*=}
	src=$root
	if [ "$ref" != work ]; then
		src=$(mktemp -d)/tree
		git worktree add -f -q --detach "$src" "$ref"
	fi
	d=$root/${AB:-.devicework/ab}/$name
	rm -rf "$d" && mkdir -p "$d/bin"
	(cd "$src" && go test -c -tags cudaops -ldflags='-s -w' -o "$d/bin/cudaops.test" ./cudaops &&
		go build -tags cudaops -ldflags='-s -w' -o "$d/bin/fp4moe" ./cmd/fp4moe &&
		echo "$name $ref $(git rev-parse --short HEAD)" > "$d/bin/COMMIT")
	cp -r "$src/cudaops/kernels" "$d/kernels"
	tar cJf "$d/bin.txz" -C "$d/bin" . && rm -rf "$d/bin"
	[ "$ref" = work ] || git worktree remove --force "$src"
	echo "staged $name ($ref): $(du -h "$d/bin.txz" | cut -f1)"
done
