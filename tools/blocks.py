#!/usr/bin/env python3
"""Summarizes a per-block trace (fp4moe bench --trace-blocks FILE): for each (shape, M) and GEMM
stage, the blocks' start range, their time (start to last warp's end) by tile (blockIdx.y), by
how many of the stage's blocks shared the block's SM, and by the round in which the block was
placed on its SM (its rank among that SM's blocks by start time), and the stage's ends.
    python3 tools/blocks.py blocks.csv [--reverse]   (--reverse: tiles launched in reverse,
    MOE_REVERSE_TILES, so that tile = gridDim.y - 1 - y)
"""
import collections
import csv
import statistics
import sys


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    reverse = "--reverse" in sys.argv
    if len(args) != 1:
        sys.exit(__doc__)
    rows = list(csv.DictReader(open(args[0])))
    keys = []
    for r in rows:
        k = (r["shape"], r["routing"], r["M"], r["stage"])
        if k[3].startswith("GEMM") and k not in keys:
            keys.append(k)
    for k in keys:
        b = [r for r in rows if (r["shape"], r["routing"], r["M"], r["stage"]) == k]
        start = [float(r["start_us"]) for r in b]
        end = [float(r["end_us"]) for r in b]
        dur = [e - s for s, e in zip(start, end)]
        ny = max(int(r["y"]) for r in b) + 1
        per_sm = collections.defaultdict(list)
        for i, r in enumerate(b):
            per_sm[int(r["sm"])].append(i)
        by_tile, by_load, by_round = collections.defaultdict(list), collections.defaultdict(list), collections.defaultdict(list)
        for sm, idx in per_sm.items():
            for rank, i in enumerate(sorted(idx, key=lambda i: start[i])):
                by_round[rank].append(dur[i])
                by_load[len(idx)].append(dur[i])
        for i, r in enumerate(b):
            y = int(r["y"])
            by_tile[ny - 1 - y if reverse else y].append(dur[i])
        ends = sorted(end)
        med = lambda v: f"{statistics.median(v):.1f}"
        print(f"{k[0]} {k[1]} M={k[2]} {k[3]}: {len(b)} blocks on {len(per_sm)} SMs, starts {min(start):.2f}-{max(start):.2f} µs, "
              f"block time {med(dur)} ({min(dur):.1f}-{max(dur):.1f}), ends p10 {ends[len(ends) // 10]:.1f} p50 {ends[len(ends) // 2]:.1f} last {ends[-1]:.1f}")
        print("    by tile:", " ".join(med(by_tile[t]) for t in sorted(by_tile)))
        print("    by blocks on the SM:", ", ".join(f"{n}: {med(v)} ({len(v) // n} SMs)" for n, v in sorted(by_load.items())))
        print("    by placement on the SM:", ", ".join(f"{r + 1}: {med(v)}" for r, v in sorted(by_round.items())))


if __name__ == "__main__":
    main()
