#!/usr/bin/env bash
# Builds every binary the GPU machine runs (-tags cudaops) from the working tree, all at once,
# into devbin/bins.tgz (ignored; carry devbin). Always rebuild them together: a binary left over
# from an earlier build runs the earlier host code against the new kernels.
set -euo pipefail
cd "$(dirname "$0")/.."
out=build/devbin
rm -rf "$out" && mkdir -p "$out" devbin
flags=(-tags cudaops -ldflags='-s -w')
go test -c "${flags[@]}" -o "$out/cudaops.test" ./cudaops
go test -c "${flags[@]}" -o "$out/graph.test" ./graph_test
go test -c "${flags[@]}" -o "$out/gptoss.test" ./gptoss
go build "${flags[@]}" -o "$out/fp4moe" ./cmd/fp4moe
go build "${flags[@]}" -o "$out/moe_block" ./examples/moe_block
git rev-parse --short HEAD > "$out/COMMIT"
git status --porcelain --untracked-files=no | grep -q . && echo "dirty" >> "$out/COMMIT" || true
tar czf devbin/bins.tgz -C "$out" .
ls -la devbin/bins.tgz
