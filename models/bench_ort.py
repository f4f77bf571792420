#!/usr/bin/env python3
"""Latency of one model under onnxruntime, on golden input #0.

    python models/bench_ort.py --model models/edge-int8.onnx --spec models/edge-int8.spec.json --iters 1000 --warmup 50
    python models/bench_ort.py ... --threads 2      # intra-op threads (default 1)

Prints ONE JSON line (load_ms: session creation; first_ms: session creation + first run):
{"runtime":"onnxruntime","version":"1.x","model":"X.onnx","lever":"threads=N","threads":N,"batch":1,"load_ms":..,
 "first_ms":..,"p50_us":..,"p99_us":..,"mean_us":..,"iters":N}
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def percentile(sorted_vals, q):
    # nearest-rank percentile on an already sorted list
    k = max(0, min(len(sorted_vals) - 1, int(np.ceil(q / 100.0 * len(sorted_vals))) - 1))
    return sorted_vals[k]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--spec", required=True)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="accepted for symmetry; output is always one JSON line")
    a = ap.parse_args()

    model = Path(a.model)
    spec = json.loads(Path(a.spec).read_text())
    shape = spec["input"]["shape"]
    golden_path = model.with_name(model.stem + ".golden.json")
    if golden_path.exists():
        g = json.loads(golden_path.read_text())
        n = int(np.prod(g["input_shape"]))
        raw = np.fromfile(model.with_name(g["input_file"]), dtype="<f4", count=n)
        x = raw.reshape(g["input_shape"]).astype(np.float32)
    else:  # no golden file: seeded normal input of the spec's shape
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, a.threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    t0 = time.perf_counter_ns()
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    load_ms = (time.perf_counter_ns() - t0) / 1e6
    feeds = {spec["input"]["name"]: x}
    outs = [spec["output"]["name"]]
    sess.run(outs, feeds)
    first_ms = (time.perf_counter_ns() - t0) / 1e6

    for _ in range(a.warmup):
        sess.run(outs, feeds)
    times = []
    for _ in range(a.iters):
        t = time.perf_counter_ns()
        sess.run(outs, feeds)
        times.append((time.perf_counter_ns() - t) / 1e3)
    times.sort()
    print(json.dumps({
        "runtime": "onnxruntime",
        "version": ort.__version__,
        "model": model.name,
        "lever": "onnx" if a.threads <= 1 else f"threads={a.threads}",
        "threads": max(1, a.threads),
        "batch": 1,
        "load_ms": round(load_ms, 3),
        "first_ms": round(first_ms, 3),
        "p50_us": round(percentile(times, 50), 2),
        "p99_us": round(percentile(times, 99), 2),
        "mean_us": round(float(np.mean(times)), 2),
        "iters": a.iters,
    }, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
