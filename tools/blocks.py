#!/usr/bin/env python3
"""Summarizes a per-block trace (fp4moe bench --trace-blocks FILE): for each (shape, M) and GEMM
stage, the blocks' start range, their time (start to last warp's end) by tile (blockIdx.y), by
how many of the stage's blocks shared the block's SM, and by the round in which the block was
placed on its SM (its rank among that SM's blocks by start time), and the stage's ends; then its
tail: the list entries past the list's length (tiles whose blocks take a median under 3 µs: they
only read the entry count), and for the real blocks the time from the last one's start to the
stage's end, the slots left empty in that time (in whole-device µs: slot-µs over the slots, the
blocks an SM holds at once times the SMs), and a block's time in the middle third of the
starts against the last tenth's.
    python3 tools/blocks.py blocks.csv[.gz] [--reverse]   (--reverse: tiles launched in reverse,
    MOE_REVERSE_TILES, so that tile = gridDim.y - 1 - y)
"""
import collections
import csv
import gzip
import statistics
import sys


def tail(b, start, end):
    """The tail summary of one stage's blocks (see the module's text)."""
    by_y = collections.defaultdict(list)
    for r, s, e in zip(b, start, end):
        by_y[int(r["y"])].append(e - s)
    empty = {y for y, v in by_y.items() if statistics.median(v) < 3}
    real = sorted((s, e, int(r["sm"])) for r, s, e in zip(b, start, end) if int(r["y"]) not in empty)
    if not real:
        return "no real blocks"
    # The slots: the blocks an SM holds at once (the median over the SMs of the most each held,
    # since a block's recorded end can trail its successor's start), times the SMs.
    most = []
    for sm in {x[2] for x in real}:
        ev = sorted([(s, 1) for s, e, m in real if m == sm] + [(e, -1) for s, e, m in real if m == sm])
        c, top = 0, 0
        for _, d in ev:
            c += d
            top = max(top, c)
        most.append(top)
    slots = int(statistics.median(most)) * len(most)
    last, stop = real[-1][0], max(e for _, e, _ in real)
    ev = sorted([(s, 1) for s, _, _ in real] + [(e, -1) for _, e, _ in real])
    c, prev, idle = 0, None, 0.0
    for t, d in ev:
        if prev is not None and t > last:
            idle += (slots - min(c, slots)) * (t - max(prev, last))
        c += d
        prev = t
    n = len(real)
    mid = statistics.median(e - s for s, e, _ in real[n // 3:2 * n // 3])
    late = statistics.median(e - s for s, e, _ in real[-max(1, n // 10):])
    return (f"{len(empty)} entries past the list; after the last real start ({last:.1f} µs) {stop - last:.1f} µs to the end, "
            f"{idle / slots:.1f} device-µs of {slots} slots empty; block time {mid:.1f} µs in the middle third, {late:.1f} in the last tenth")


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    reverse = "--reverse" in sys.argv
    if len(args) != 1:
        sys.exit(__doc__)
    opener = gzip.open if args[0].endswith(".gz") else open
    rows = list(csv.DictReader(opener(args[0], "rt")))
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
        print("    tail:", tail(b, start, end))


if __name__ == "__main__":
    main()
