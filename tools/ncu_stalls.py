#!/usr/bin/env python3
"""Summarises an ncu source-page CSV (tools/devprof.sh: --page source --print-source sass --csv).

Prints the kernel's warp-state samples by stall reason, by SASS opcode (with each opcode's
executed instructions), and the instructions with the most samples.
Usage: python3 tools/ncu_stalls.py ncu_src.csv[.gz] [TOP]
"""
import collections
import csv
import gzip
import re
import sys


def rows(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        header = None
        for r in csv.reader(f):
            if r and r[0] == "Address":
                header = r
                continue
            if header and len(r) == len(header):
                yield dict(zip(header, r))


def num(x):
    try:
        return float(x)
    except ValueError:
        return 0.0


def main():
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    data = list(rows(path))
    if not data:
        sys.exit("no source rows in " + path)
    stalls = [k for k in data[0] if k.startswith("stall_") and "Not Issued" not in k]
    total = sum(num(d[s]) for d in data for s in stalls) or 1.0
    print("samples by reason")
    by_reason = collections.Counter({s[6:]: sum(num(d[s]) for d in data) for s in stalls})
    for s, v in by_reason.most_common(12):
        print(f"  {s:20s} {100 * v / total:5.1f} %")
    by_op = collections.defaultdict(collections.Counter)
    executed = collections.Counter()
    for d in data:
        src = re.sub(r"^@!?U?P\w+\s+", "", d["Source"].strip())
        op = src.split()[0] if src else "?"
        executed[op] += num(d["Instructions Executed"])
        for s in stalls:
            by_op[op][s[6:]] += num(d[s])
    print("samples by opcode (executed warp instructions)")
    for op, c in sorted(by_op.items(), key=lambda x: -sum(x[1].values()))[:top]:
        reasons = ", ".join(f"{k} {100 * v / total:.1f}" for k, v in c.most_common(3) if v)
        print(f"  {op:26s} {100 * sum(c.values()) / total:5.1f} %  {executed[op]:14.0f}  {reasons}")
    print("instructions with the most samples")
    for d in sorted(data, key=lambda d: -sum(num(d[s]) for s in stalls))[:top]:
        c = collections.Counter({s[6:]: num(d[s]) for s in stalls})
        reasons = ", ".join(f"{k} {int(v)}" for k, v in c.most_common(2) if v)
        print(f"  {d['Address'][-6:]} {sum(c.values()):7.0f}  {d['Source'].strip()[:64]:64s} {reasons}")


if __name__ == "__main__":
    main()
