#!/usr/bin/env python3
# Dependencies: nothing beyond models/requirements.txt (numpy, onnx, onnxruntime, mlxtend, pillow, scipy); no new pins.
"""A drift-robust "cloud" digit classifier for the edge -> cloud cascade, in one seeded run.

    python models/make_robust.py             # from any directory, ~8 min on the (busy) 2-core box

The edge classifier (edge-int8) and the existing cloud-fp32 were trained on clean digits with +-2 px shifts only and
fall to ~0.65 top-1 on the shifted stream (data/shifted/digits.bin, made by make_detectors.make_shifted from TEST
digits). This script trains a bigger CNN on the same TRAIN split, augmented with the same kind of shift:

  1. data: make_models.load_split() (train 3000 / calib 500 / test 1500, seeded);
  2. every epoch draws FRESH transforms of the TRAIN digits with make_detectors.make_shifted (rotation +-35 deg,
     scale 0.6..1.2 about the centre of mass, shift +-2.5 px, Gaussian noise std 50) under its own seed, and mixes
     them with clean TRAIN digits (make_models.shift_augment, +-2 px) at CLEAN_SHARE;
  3. model selection (best epoch) on CALIB only: a fixed shifted version of the CALIB split plus clean CALIB;
     TEST digits and the shifted stream are never used for training or selection, only for the final report;
  4. export ONNX like the other digit models (make_models.net_to_onnx: opset 13, IR 8, input "input" float32
     [N,1,28,28] NCHW with the batch bound to 1 by the spec, output "logits" [N,10]), write cloud-robust-fp32.spec.json
     (make_models.write_spec, test split accuracy) and cloud-robust.summary.json: onnxruntime top-1 on clean test
     and on the shifted stream, share of max-prob < 0.9, and the cascade accuracy on the shifted stream when the
     edge model's hardest k% (lowest max-prob) go to this model (and, for comparison, to cloud-fp32).
"""
from __future__ import annotations

import os

# one BLAS thread: deterministic summation order and no oversubscription on a 2-core box
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import onnx  # noqa: E402

import make_detectors as md  # noqa: E402  (make_shifted: the stream's transform, reused for augmentation)
import make_models as mm  # noqa: E402  (data split, numpy CNN, ONNX export, spec, onnxruntime helpers)

STEM = "cloud-robust-fp32"
SEED = mm.SEED + 700  # not used by make_models (+1..+6) or make_detectors (+100..+300)
QUICK = os.environ.get("QUICK") == "1"  # developer knob: few epochs, checks only warn; do not commit its output
EPOCHS = int(os.environ.get("EPOCHS", 4 if QUICK else 60))
BATCH = 64
LR = 2e-3
WD = 1e-4
DROPOUT = 0.2
CLEAN_SHARE = 0.35  # share of each epoch drawn from clean (+-2 px) TRAIN digits, the rest shifted like the stream
CONV_SPEC = [(1, 32, True), (32, 64, True), (64, 64, False)]  # conv3x3 pad 1 + ReLU (+ maxpool 2)
DENSE_SPEC = [(64 * 7 * 7, 64), (64, 10)]
CASCADE_K = (5, 10, 20, 30)
MAX_BYTES = 1_500_000
T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {time.strftime('%H:%M:%S')} {msg}", flush=True)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def read_stream(path: Path):
    raw = np.frombuffer(path.read_bytes(), np.uint8).reshape(-1, 785)
    return raw[:, 1:].reshape(-1, 28, 28).copy(), raw[:, 0].astype(np.int64)


def epoch_data(Xtr, ytr, rng):
    """Fresh shifted copies of the TRAIN digits (the stream's transform, own seed) mixed with clean ones."""
    Xs, ys = md.make_shifted(Xtr, ytr, rng)  # SHIFT_N samples, every train digit once (len(train) == SHIFT_N)
    Xc = mm.shift_augment(Xtr, rng)
    n = len(ys)
    n_clean = int(round(CLEAN_SHARE * n))
    ci = rng.choice(len(ytr), n_clean, replace=False)
    si = rng.choice(n, n - n_clean, replace=False)
    X = np.concatenate([Xc[ci], Xs[si]])
    y = np.concatenate([ytr[ci], ys[si].astype(np.int64)])
    return X, y


def train(net, Xtr, ytr, sel_sets, rng):
    """Adam + L2 + cosine decay over all steps (as make_models.train), fresh augmentation every epoch; keeps the
    parameters of the epoch with the best CALIB selection score (shifted calib top-1, clean calib as tie-break)."""
    m = {k: np.zeros_like(v) for k, v in net.p.items()}
    v = {k: np.zeros_like(v) for k, v in net.p.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    n = len(ytr)
    steps_per_epoch = (n + BATCH - 1) // BATCH
    steps_total = EPOCHS * steps_per_epoch
    step = 0
    best = (-1.0, -1.0, 0, None)
    history = []
    for ep in range(EPOCHS):
        te = time.time()
        X, y = epoch_data(Xtr, ytr, rng)
        perm = rng.permutation(len(y))
        tot_loss, tot_ok = 0.0, 0
        for s in range(0, len(y), BATCH):
            idx = perm[s:s + BATCH]
            xb = mm.preprocess(X[idx])
            yb = y[idx]
            logits, state = net.forward(xb, train=True, rng=rng, dropout=DROPOUT)
            p = softmax(logits)
            tot_loss += float(-np.log(p[np.arange(len(yb)), yb] + 1e-12).sum())
            tot_ok += int((logits.argmax(1) == yb).sum())
            d = p
            d[np.arange(len(yb)), yb] -= 1
            d /= len(yb)
            grads = net.backward(d.astype(np.float32), state)
            step += 1
            cur_lr = np.float32(LR * 0.5 * (1 + np.cos(np.pi * (step - 1) / steps_total)))
            c1, c2 = np.float32(1 - b1 ** step), np.float32(1 - b2 ** step)
            for k in net.p:
                gk = grads[k]
                if WD and k.startswith(("cw", "dw")):
                    gk = gk + np.float32(WD) * net.p[k]
                m[k] = np.float32(b1) * m[k] + np.float32(1 - b1) * gk
                v[k] = np.float32(b2) * v[k] + np.float32(1 - b2) * gk * gk
                net.p[k] = (net.p[k] - cur_lr * (m[k] / c1) / (np.sqrt(v[k] / c2) + np.float32(eps))).astype(np.float32)
        accs = {name: float((net.predict(x, bs=250).argmax(1) == lab).mean()) for name, (x, lab) in sel_sets.items()}
        score = (accs["calib_shifted"], accs["calib"])
        if score > best[:2]:
            best = (*score, ep + 1, {k: val.copy() for k, val in net.p.items()})
        history.append({"epoch": ep + 1, "loss": round(tot_loss / len(y), 4), "train_acc": round(tot_ok / len(y), 4),
                        **{k: round(a, 4) for k, a in accs.items()}})
        log(f"epoch {ep + 1}/{EPOCHS} loss {tot_loss / len(y):.4f} train-acc {tot_ok / len(y):.4f} "
            f"calib {accs['calib']:.4f} calib-shifted {accs['calib_shifted']:.4f} lr {cur_lr:.2e} "
            f"({time.time() - te:.1f}s)")
    net.p = best[3]
    log(f"selected epoch {best[2]}: calib-shifted {best[0]:.4f} calib {best[1]:.4f}")
    return best[2], history


def cascade(edge_logits, cloud_logits, labels, ks):
    """Accuracy when the edge's hardest k% (lowest max-prob; stable order) are answered by the cloud model."""
    conf = softmax(edge_logits).max(1)
    order = np.argsort(conf, kind="stable")
    e_pred, c_pred = edge_logits.argmax(1), cloud_logits.argmax(1)
    out = {}
    for k in ks:
        n_fwd = int(round(len(labels) * k / 100))
        pred = e_pred.copy()
        pred[order[:n_fwd]] = c_pred[order[:n_fwd]]
        out[str(k)] = {"forwarded": n_fwd, "top1": round(float((pred == labels).mean()), 4),
                       "edge_top1_on_forwarded": round(float((e_pred[order[:n_fwd]] == labels[order[:n_fwd]]).mean()), 4),
                       "cloud_top1_on_forwarded": round(float((c_pred[order[:n_fwd]] == labels[order[:n_fwd]]).mean()), 4)}
    return out


def stats(logits, labels):
    p = softmax(logits)
    return {"n": int(len(labels)), "top1": round(float((logits.argmax(1) == labels).mean()), 4),
            "maxprob_below_0.9": round(float((p.max(1) < 0.9).mean()), 4),
            "mean_maxprob": round(float(p.max(1).mean()), 4)}


def main():
    problems = []
    split = mm.load_split()
    Xtr, ytr = split["train"]
    Xca, yca = split["calib"]
    Xte, yte = split["test"]
    # selection set: a FIXED shifted version of the CALIB split (own seed), never TEST or the stream
    Xca_sh, yca_sh = md.make_shifted(Xca, yca, np.random.default_rng(SEED + 1))
    sel_sets = {"calib": (mm.preprocess(Xca), yca), "calib_shifted": (mm.preprocess(Xca_sh), yca_sh.astype(np.int64))}
    log(f"data: train {len(ytr)} calib {len(yca)} (+{len(yca_sh)} shifted for selection) test {len(yte)}")

    rng = np.random.default_rng(SEED)
    net = mm.Net(CONV_SPEC, DENSE_SPEC, rng)
    log(f"{STEM}: params {net.n_params()}, {EPOCHS} epochs x {len(ytr)} samples "
        f"({CLEAN_SHARE:.0%} clean), batch {BATCH}, lr {LR} cosine, wd {WD}, dropout {DROPOUT}")
    t_train = time.time()
    best_epoch, history = train(net, Xtr, ytr, sel_sets, rng)
    train_seconds = round(time.time() - t_train, 1)
    log(f"training took {train_seconds}s")

    # ---------------- export (same graph form as edge/cloud: make_models.net_to_onnx) ----------------
    path = HERE / f"{STEM}.onnx"
    model = mm.net_to_onnx(net, "cloud_robust")
    model.producer_name = "outpost-make-robust"
    onnx.save(model, str(path))
    mm.check_ops(path, forbid_float=("Gemm",))
    m = onnx.load(str(path))
    assert m.ir_version == mm.IR_VERSION and [(o.domain or "", o.version) for o in m.opset_import] == [("", mm.OPSET)]
    n_bytes = path.stat().st_size
    n_params = sum(int(np.prod(t.dims)) for t in m.graph.initializer)
    log(f"{path.name}: {n_bytes} bytes, {n_params} params")
    if n_bytes >= MAX_BYTES:
        problems.append(f"{path.name} is {n_bytes} bytes (>= {MAX_BYTES})")

    # ---------------- onnxruntime evaluation ----------------
    x_test = mm.preprocess(Xte)
    Xsh, ysh = read_stream(HERE / "data" / "shifted" / "digits.bin")
    x_sh = mm.preprocess(Xsh)
    logits = {}
    for stem in (STEM, "cloud-fp32", "edge-int8"):
        logits[stem] = {"test": mm.ort_logits(HERE / f"{stem}.onnx", x_test),
                        "shifted": mm.ort_logits(HERE / f"{stem}.onnx", x_sh)}
    np_test = net.predict(x_test, bs=250)
    agree = float((np_test.argmax(1) == logits[STEM]["test"].argmax(1)).mean())
    diff = float(np.abs(np_test - logits[STEM]["test"]).max())
    log(f"numpy vs onnxruntime on test: argmax agreement {agree:.4f}, max|diff| {diff:.3g}")
    if agree < 0.998:
        problems.append(f"ONNX export disagrees with the numpy model (argmax agreement {agree:.4f})")

    res = {stem: {"test": stats(v["test"], yte), "shifted": stats(v["shifted"], ysh)} for stem, v in logits.items()}
    for stem, r in res.items():
        log(f"{stem}: test {r['test']} | shifted {r['shifted']}")
    casc = {c: {"shifted": cascade(logits["edge-int8"]["shifted"], logits[c]["shifted"], ysh, CASCADE_K),
                "test": cascade(logits["edge-int8"]["test"], logits[c]["test"], yte, CASCADE_K)}
            for c in (STEM, "cloud-fp32")}
    for c, r in casc.items():
        log(f"cascade edge-int8 -> {c} (shifted): " + ", ".join(f"{k}%: {v['top1']}" for k, v in r["shifted"].items()))

    digits = [str(i) for i in range(10)]
    gray = {"color": "gray", "width": 28, "height": 28, "scale": 255.0, "mean": [mm.MEAN], "std": [mm.STD]}
    mm.write_spec(STEM, [1, 1, 28, 28], gray, digits,
                  {"split": "test", "n": int(len(yte)), "top1": res[STEM]["test"]["top1"]})

    if res[STEM]["test"]["top1"] < 0.97:
        problems.append(f"clean test top-1 {res[STEM]['test']['top1']} < 0.97")
    if res[STEM]["shifted"]["top1"] < 0.85:
        problems.append(f"shifted top-1 {res[STEM]['shifted']['top1']} < 0.85")

    summary = {
        "model": f"{STEM}.onnx",
        "spec": f"{STEM}.spec.json",
        "params": n_params,
        "bytes": n_bytes,
        "architecture": {"conv3x3_pad1_relu": [[ci, co, "maxpool2" if p else None] for ci, co, p in CONV_SPEC],
                         "dense": [list(d) for d in DENSE_SPEC], "ops": sorted({n.op_type for n in m.graph.node})},
        "test_top1": res[STEM]["test"]["top1"],
        "shifted_top1": res[STEM]["shifted"]["top1"],
        "test_maxprob_below_0.9": res[STEM]["test"]["maxprob_below_0.9"],
        "shifted_maxprob_below_0.9": res[STEM]["shifted"]["maxprob_below_0.9"],
        "classifiers": res,
        "cascade_shifted": {
            "rule": "edge-int8 answers, except its k% lowest max-prob inputs, which the cloud model answers",
            "edge_alone": res["edge-int8"]["shifted"]["top1"],
            STEM: {k: v["top1"] for k, v in casc[STEM]["shifted"].items()},
            "cloud-fp32": {k: v["top1"] for k, v in casc["cloud-fp32"]["shifted"].items()},
        },
        "cascade_detail": casc,
        "training": {
            "seconds": train_seconds,
            "epochs": EPOCHS,
            "selected_epoch": best_epoch,
            "samples_per_epoch": int(len(ytr)),
            "clean_share": CLEAN_SHARE,
            "augmentation": "make_detectors.make_shifted on TRAIN digits, fresh transforms every epoch "
                            f"(rotation +-{md.SHIFT_ROT_DEG:g} deg, scale {md.SHIFT_SCALE[0]}..{md.SHIFT_SCALE[1]}, "
                            f"shift +-{md.SHIFT_PX:g} px, noise std {md.SHIFT_NOISE_STD:g}); clean share with "
                            "make_models.shift_augment (+-2 px)",
            "selection": "best shifted-CALIB top-1 (clean CALIB tie-break); TEST and the shifted stream unused",
            "optimizer": {"adam_lr": LR, "schedule": "cosine", "batch": BATCH, "l2": WD, "dropout": DROPOUT},
            "seed": SEED,
            "history": history,
        },
        "quick": QUICK,
        "seconds_total": None,
    }
    summary["seconds_total"] = round(time.time() - T0, 1)
    (HERE / "cloud-robust.summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    log(f"wrote {STEM}.onnx, {STEM}.spec.json, cloud-robust.summary.json in {summary['seconds_total']}s")
    if problems:
        for p in problems:
            log(("WARNING (QUICK mode): " if QUICK else "FATAL: ") + p)
        if not QUICK:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
