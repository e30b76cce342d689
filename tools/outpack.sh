#!/usr/bin/env bash
# The GPU machine brings back at most eight files from $OUT. Run this last in a call's script
# that adds files beside tools/devfinal.sh's: when $OUT holds more than eight files (anywhere
# under it), it keeps moe.fatbin, manifest.txt and summary.txt at the top and packs everything
# else into rest.tgz, so that the fatbin to commit always comes back.
#   ... ; bash tools/outpack.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
n=$(find "$OUT" -type f | wc -l)
[ "$n" -le 8 ] && exit 0
cd "$OUT" || exit 1
keep='^\./(moe\.fatbin|manifest\.txt|summary\.txt)$'
rest=$(find . -mindepth 1 -maxdepth 1 | grep -Ev "$keep" | grep -v '^\./rest\.tgz$')
tar czf rest.tgz --remove-files $rest
echo "outpack: $n files, packed into rest.tgz: $(echo $rest | wc -w) entries"
