#!/usr/bin/env python3
"""onnxruntime's latency of one task model on one given input, and its outputs (issue 20; run by benches/tasks.rs).

    python models/bench_det_ort.py --model models/det/det-edge-int8.onnx --input x.bin --name input \
        --shape 1,1,64,64 --seconds 2 [--outputs y.bin]

The input is the raw little-endian float32 tensor the Rust bench preprocessed (the same bytes tract runs on). One
thread (`intra_op_num_threads=1`, sequential), every graph optimisation on, 20 warm-up runs, then runs one after the
other for `--seconds`. With `--outputs`, the model's outputs of that input are written there: each output in the
model's order as float32 little-endian, one after the other (the bench compares them with tract's).

Prints ONE JSON line:
{"runtime":"onnxruntime","version":"1.x","model":"X.onnx","threads":1,"p50_us":..,"p99_us":..,"mean_us":..,
 "runs":N,"outputs":[{"name":..,"shape":[..]}]}
A missing onnxruntime or numpy is one JSON line {"error": "..."} and exit code 3, so the bench can say so.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path


def percentile(sorted_vals, q):
    # nearest rank, the rule of benches/*.rs and models/bench_ort.py
    k = max(1, min(len(sorted_vals), math.ceil(q / 100.0 * len(sorted_vals))))
    return sorted_vals[k - 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True, help="raw float32 little-endian tensor")
    ap.add_argument("--name", required=True, help="the model's input name")
    ap.add_argument("--shape", required=True, help="comma-separated input shape")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--outputs", help="write the outputs of the input here (float32 LE, model order)")
    a = ap.parse_args()
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as e:  # the bench prints this in the ORT column
        print(json.dumps({"error": f"{e}"}))
        return 3

    shape = [int(s) for s in a.shape.split(",")]
    x = np.fromfile(a.input, dtype="<f4").reshape(shape)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(a.model), so, providers=["CPUExecutionProvider"])
    feeds = {a.name: x}
    outs = sess.run(None, feeds)
    if a.outputs:
        with open(a.outputs, "wb") as f:
            for o in outs:
                f.write(np.ascontiguousarray(o, dtype="<f4").tobytes())
    for _ in range(a.warmup):
        sess.run(None, feeds)
    times = []
    end = time.perf_counter() + a.seconds
    while time.perf_counter() < end or len(times) < 10:
        t = time.perf_counter_ns()
        sess.run(None, feeds)
        times.append((time.perf_counter_ns() - t) / 1e3)
    times.sort()
    print(json.dumps({
        "runtime": "onnxruntime",
        "version": ort.__version__,
        "model": Path(a.model).name,
        "threads": 1,
        "p50_us": round(percentile(times, 50), 2),
        "p99_us": round(percentile(times, 99), 2),
        "mean_us": round(sum(times) / len(times), 2),
        "runs": len(times),
        "outputs": [{"name": o.name, "shape": list(r.shape)} for o, r in zip(sess.get_outputs(), outs)],
    }, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
