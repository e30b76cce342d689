#!/usr/bin/env python3
"""An A/B's bench CSVs side by side: one row per (shape, M), the first variant's median µs, and
each other variant (and each second pass, NAME.r2) relative to it in percent. Reads
DIR/ab-NAME.csv and DIR/ab-NAME.r2.csv as tools/abrun.sh writes them.
    python3 tools/abpivot.py DIR main x64e g2r"""
import csv, os, sys


def load(path):
    rows = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            rows[(r["shape"], int(r["M"]))] = float(r["median_us"])
    return rows


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    d, names = sys.argv[1], sys.argv[2:]
    cols = []  # (label, rows)
    for n in names:
        for label, path in ((n, f"ab-{n}.csv"), (n + ".r2", f"ab-{n}.r2.csv")):
            p = os.path.join(d, path)
            if os.path.exists(p):
                cols.append((label, load(p)))
    if not cols:
        sys.exit(f"no ab-*.csv for {names} in {d}")
    base_label, base = cols[0]
    keys = sorted({k for _, rows in cols for k in rows})
    print(f"{'shape':<14} {'M':>6} " + " ".join(f"{label:>10}" for label, _ in cols))
    for k in keys:
        cells = []
        for label, rows in cols:
            if k not in rows:
                cells.append(f"{'-':>10}")
            elif label == base_label:
                cells.append(f"{rows[k]:>8.1f}us")
            elif k in base:
                cells.append(f"{100 * (rows[k] / base[k] - 1):>+9.1f}%")
            else:
                cells.append(f"{rows[k]:>8.1f}us")
        print(f"{k[0]:<14} {k[1]:>6} " + " ".join(cells))


main()
