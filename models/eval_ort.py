#!/usr/bin/env python3
"""Test-split (or calib-split) top-1 accuracy of the digit models, read from the PNGs like the Rust side does.

    python models/eval_ort.py [--split test|calib] [models/edge-int8.onnx ...]
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

HERE = Path(__file__).resolve().parent


def load(split):
    files = sorted((HERE / "data" / split).glob("*.png"))
    imgs = np.stack([np.asarray(Image.open(f).convert("L"), dtype=np.uint8) for f in files])
    labels = np.array([int(f.stem.split("_")[1]) for f in files])
    return imgs, labels


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", default="test", choices=["test", "calib"])
    ap.add_argument("models", nargs="*")
    a = ap.parse_args()
    models = [Path(m) for m in a.models] or [HERE / f"{s}.onnx" for s in ("edge-fp32", "edge-qdq", "edge-int8", "cloud-fp32")]
    imgs, labels = load(a.split)
    for m in models:
        spec = json.loads(m.with_name(m.stem + ".spec.json").read_text())
        pp = spec["preprocess"]
        x = imgs.astype(np.float32) / np.float32(pp["scale"])
        x = ((x - np.float32(pp["mean"][0])) / np.float32(pp["std"][0]))[:, None].astype(np.float32)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(m), so, providers=["CPUExecutionProvider"])
        logits = np.concatenate([sess.run(["logits"], {"input": x[i:i + 250]})[0] for i in range(0, len(x), 250)])
        acc = float((logits.argmax(1) == labels).mean())
        print(json.dumps({"model": m.name, "split": a.split, "n": int(len(labels)), "top1": round(acc, 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
