#!/usr/bin/env bash
# Installs the CUDA driver-API headers and libcuda (Debian's nvidia-cuda-dev, CUDA 11.8, from
# the non-free section) so that `go build -tags cuda` and `go vet -tags cuda` work on a machine
# without a GPU. gorgonia.org/cu v0.9.6 needs headers older than CUDA 13 (its 3-argument
# cuCtxCreate). Idempotent: does nothing when cuda.h is already there.
set -euo pipefail
if [ -f /usr/include/cuda.h ] && ls /usr/lib/x86_64-linux-gnu/libcuda.so >/dev/null 2>&1; then
	exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
list=/etc/apt/sources.list.d/fp4moe-nonfree.sources
if [ ! -f "$list" ]; then
	$SUDO tee "$list" >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: contrib non-free non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends nvidia-cuda-dev >/dev/null
test -f /usr/include/cuda.h
