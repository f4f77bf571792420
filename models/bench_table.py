#!/usr/bin/env python3
"""Join the JSON lines of `cargo bench --bench inference` (tract) and models/bench_ort.py (onnxruntime) into one
markdown table. Several lines for the same (model, runtime) (rounds) are reduced to their medians.

    python3 models/bench_table.py results.jsonl [--machine "text"]

Standard library only, so it runs without the models venv.
"""
import json
import statistics
import sys
from collections import OrderedDict


def fmt(x, digits=0):
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    rows = OrderedDict()
    versions = {}
    with open(sys.argv[1]) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            stem = r["model"].removesuffix(".onnx")
            rows.setdefault(stem, {}).setdefault(r["runtime"], []).append(r)
            versions[r["runtime"]] = r["version"]

    def med(rs, key):
        return statistics.median(r[key] for r in rs)

    out = []
    out.append("| model | runtime | load+optimize ms | p50 µs | p99 µs | tract/onnxruntime (p50) |")
    out.append("|---|---|---:|---:|---:|---:|")
    for stem, by_rt in rows.items():
        ort = by_rt.get("onnxruntime")
        ort_p50 = med(ort, "p50_us") if ort else None
        for rt in ("tract", "onnxruntime"):
            rs = by_rt.get(rt)
            if not rs:
                continue
            p50 = med(rs, "p50_us")
            if rt == "tract" and ort_p50:
                ratio = f"**{p50 / ort_p50:.1f}x**"
            else:
                ratio = ""
            digits = 1 if p50 < 1000 else 0
            out.append(
                f"| {stem} | {rt} {versions[rt]} | {fmt(med(rs, 'load_ms'), 1)} | {fmt(p50, digits)} "
                f"| {fmt(med(rs, 'p99_us'), digits)} | {ratio} |"
            )
    print("\n".join(out))
    rounds = max(len(v) for by_rt in rows.values() for v in by_rt.values()) if rows else 0
    if rounds > 1:
        print(f"\n(medians over {rounds} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
