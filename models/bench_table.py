#!/usr/bin/env python3
"""Join the JSON lines of `cargo bench --bench inference` (tract, one line per lever) and models/bench_ort.py
(onnxruntime, one line per thread count) into one markdown table, then the issue-13 ratios. Several lines for the
same (model, runtime, lever) (rounds) are reduced to their medians.

    python3 models/bench_table.py results.jsonl

Standard library only, so it runs without the models venv.
"""
import json
import statistics
import sys
from collections import OrderedDict

FAMILIES = OrderedDict([
    ("edge", ["edge-fp32", "edge-qdq", "edge-int8"]),
    ("cloud", ["cloud-fp32"]),
    ("mobilenetv2", ["mobilenetv2-fp32", "mobilenetv2-int8"]),
])
LEVER_ORDER = {"onnx": 0, "int8-kernels": 0.5, "nnef": 2}


def fmt(x, digits=0):
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def lever_rank(lever):
    if lever in LEVER_ORDER:
        return LEVER_ORDER[lever]
    if lever.startswith("threads="):
        return 1 + int(lever.split("=")[1].split()[0]) / 1000 + (0.0001 if "forced" in lever else 0)
    return 3


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    groups = OrderedDict()
    versions = {}
    with open(sys.argv[1]) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            r.setdefault("lever", "onnx")
            r.setdefault("threads", 1)
            r.setdefault("batch", 1)
            stem = r["model"].removesuffix(".onnx")
            groups.setdefault((stem, r["runtime"], r["lever"]), []).append(r)
            versions[r["runtime"]] = r["version"]

    def med(rs, key):
        vals = [r[key] for r in rs if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    row = {k: {key: med(rs, key) for key in ("load_ms", "first_ms", "p50_us", "p99_us")} | {
        "threads": rs[0]["threads"], "batch": rs[0]["batch"]} for k, rs in groups.items()}

    def p50(stem, rt, lever):
        return row.get((stem, rt, lever), {}).get("p50_us")

    out = ["| model | runtime | lever | cold load ms | load to first answer ms | p50 µs | p99 µs | tract / onnxruntime (p50, same threads) |",
           "|---|---|---|---:|---:|---:|---:|---:|"]
    stems = list(OrderedDict.fromkeys(k[0] for k in groups))
    for stem in stems:
        keys = [k for k in groups if k[0] == stem]
        keys.sort(key=lambda k: (0 if k[1] == "tract" else 1, lever_rank(k[2])))
        for k in keys:
            r = row[k]
            ratio = ""
            if k[1] == "tract" and r["batch"] == 1:
                ort_lever = "onnx" if r["threads"] == 1 else f"threads={r['threads']}"
                o = p50(stem, "onnxruntime", ort_lever)
                if o:
                    ratio = f"**{r['p50_us'] / o:.2f}x**"
            lever = k[2] + (" (per sample)" if r["batch"] > 1 else "")
            if k[1] == "onnxruntime" and lever == "onnx":
                lever = "threads=1"
            elif k[1] == "tract" and k[2] in ("onnx", "nnef", "int8-kernels"):
                lever = f"{k[2]}, threads=1"
            digits = 1 if (r["p50_us"] or 0) < 1000 else 0
            out.append(f"| {stem} | {k[1]} {versions[k[1]]} | {lever} | {fmt(r['load_ms'], 1)} | {fmt(r['first_ms'], 1)} "
                       f"| {fmt(r['p50_us'], digits)} | {fmt(r['p99_us'], digits)} | {ratio} |")
    print("\n".join(out))

    print("\nRatios (issue 13 targets):\n")
    for fam, members in FAMILIES.items():
        present = [m for m in members if m in stems]
        if not present:
            continue
        for threads in sorted({r["threads"] for r in row.values()}):
            tl = "onnx" if threads == 1 else f"threads={threads}"
            t = [(p50(m, "tract", tl), m) for m in present if p50(m, "tract", tl)]
            o = [(p50(m, "onnxruntime", tl), m) for m in present if p50(m, "onnxruntime", tl)]
            if t and o:
                bt, bo = min(t), min(o)
                print(f"- {fam}, {threads} thread(s): best tract {bt[1]} {bt[0]:,.1f} µs / best onnxruntime {bo[1]} "
                      f"{bo[0]:,.1f} µs = **{bt[0] / bo[0]:.2f}x** (target <= 1.5)")
        for m in present:
            one, two = p50(m, "tract", "onnx"), p50(m, "tract", "threads=2")
            if fam == "mobilenetv2" and one and two:
                print(f"- {m}: tract p50 with 2 threads / 1 thread = **{two / one:.2f}x** (target <= 0.6)")
        if fam == "mobilenetv2":
            for m in present:
                o = row.get((m, "onnxruntime", "onnx"), {}).get("first_ms")
                firsts = [(row[(m, "tract", lv)]["first_ms"], lv) for lv in ("onnx", "nnef")
                          if (m, "tract", lv) in row and row[(m, "tract", lv)]["first_ms"]]
                if o and firsts:
                    best = min(firsts)
                    print(f"- {m}: cold load to first answer, best tract ({best[1]}) {best[0]:,.1f} ms / onnxruntime "
                          f"{o:,.1f} ms = **{best[0] / o:.2f}x** (target <= 1.0)")
    rounds = max(len(v) for v in groups.values()) if groups else 0
    if rounds > 1:
        print(f"\n(medians over {rounds} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
