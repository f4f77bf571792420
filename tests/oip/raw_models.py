"""Raw tensor models through the Open Inference Protocol v2, driven by the real `tritonclient` HTTP client: a real
multi-input model that a package ships (Silero VAD from the silero-vad wheel, whose recurrent state the client
passes back), streamed over real speech and checked against the golden probabilities onnxruntime gave; and a small
model that carries UINT8, INT32, INT64 and FP32 both ways. Run by tests/it/oip.rs:

    python tests/oip/raw_models.py --url 127.0.0.1:PORT --models models

Prints one line per check; exits non-zero with the failing check's message on the first failure.
"""

import argparse
import json
import urllib.request

import numpy as np
import tritonclient.http as httpclient

from triton_client import check, refused  # the classifier script's checks, beside this one


def tensor(name, array, binary):
    dtypes = {np.float32: "FP32", np.int64: "INT64", np.int32: "INT32", np.uint8: "UINT8"}
    t = httpclient.InferInput(name, list(array.shape), dtypes[array.dtype.type])
    t.set_data_from_numpy(array, binary_data=binary)
    return t


def vad(client, models, url):
    golden = json.load(open(f"{models}/vad/golden.json"))
    frames = np.fromfile(f"{models}/vad/frames.bin", dtype="<f4").reshape(golden["frames"]["shape"])
    md = client.get_model_metadata("silero-vad")
    got = [(i["name"], i["datatype"], i["shape"]) for i in md["inputs"]]
    check(got == [("input", "FP32", [1, 576]), ("state", "FP32", [2, 1, 128]), ("sr", "INT64", [])],
          f"VAD metadata lists its three inputs: {got}")
    check([o["name"] for o in md["outputs"]] == ["output", "stateN"], f"VAD outputs: {md['outputs']}")

    state = np.zeros((2, 1, 128), dtype=np.float32)
    sr = np.array(16000, dtype=np.int64)
    probs = []
    for i, frame in enumerate(frames):
        binary = i % 2 == 0  # both forms, every datatype, on alternate frames
        inputs = [
            tensor("input", frame.reshape(1, 576).astype(np.float32), binary),
            tensor("state", state, binary),
            tensor("sr", sr, binary),
        ]
        outputs = [httpclient.InferRequestedOutput("output", binary_data=binary),
                   httpclient.InferRequestedOutput("stateN", binary_data=not binary)]
        r = client.infer("silero-vad", inputs, outputs=outputs)
        probs.append(float(r.as_numpy("output").reshape(-1)[0]))
        state = r.as_numpy("stateN").astype(np.float32)
        if i == 0:
            check(r.get_response()["model_version"] == "1", "the answer names model_version")
    want = np.array([e["prob"] for e in golden["expected"]], dtype=np.float64)
    diff = float(np.max(np.abs(np.array(probs) - want)))
    tol = golden["tolerance"]["prob_abs"]
    check(len(probs) == len(want) and diff <= tol,
          f"{len(probs)} frames of real speech: speech probabilities within {tol} of onnxruntime's (max diff {diff:.2e})")
    speech = sum(p >= 0.5 for p in probs)
    check(speech == 97, f"{speech} of {len(probs)} frames are speech (golden: {golden['speech_frames']})")
    final = np.array(golden["final_stateN"], dtype=np.float64)
    sdiff = float(np.max(np.abs(state.reshape(-1)[: len(final)] - final)))
    check(sdiff <= golden["tolerance"]["stateN_abs"], f"the state the client carried matches (max diff {sdiff:.2e})")

    # Stateful: the same request twice is run twice, never answered from the cache.
    for _ in range(2):
        client.infer("silero-vad", [tensor("input", frames[40].reshape(1, 576), True),
                                    tensor("state", np.zeros((2, 1, 128), np.float32), True),
                                    tensor("sr", sr, True)])
    status = json.load(urllib.request.urlopen(f"http://{url}/v1/status"))
    counters = status["models"]["silero-vad"]["counters"]
    check(counters["cache_hits"] == 0 and counters["requests"] == len(frames) + 2,
          f"a stateful model is never answered from the cache: {counters}")

    # Requests that do not fit: 400, and the model keeps serving.
    good = lambda: [tensor("input", frames[0].reshape(1, 576), True),
                    tensor("state", np.zeros((2, 1, 128), np.float32), True), tensor("sr", sr, True)]
    bad_shape = good()
    bad_shape[1] = tensor("state", np.zeros((1, 2, 128), np.float32), True)
    refused(lambda: client.infer("silero-vad", bad_shape), "VAD state of the wrong shape", 400)
    bad_type = good()
    bad_type[2] = tensor("sr", np.array(16000, dtype=np.int32), True)
    refused(lambda: client.infer("silero-vad", bad_type), "VAD sr as INT32", 400)
    refused(lambda: client.infer("silero-vad", good()[:2]), "VAD without its sr input", 400)
    r = client.infer("silero-vad", good())
    check(abs(float(r.as_numpy("output").reshape(-1)[0]) - want[0]) <= tol, "VAD still serves after the bad requests")


def dtypes(client):
    md = client.get_model_metadata("dtypes")
    check([i["datatype"] for i in md["inputs"]] == ["UINT8", "INT32", "INT64"]
          and [o["datatype"] for o in md["outputs"]] == ["INT32", "INT64", "INT64", "FP32", "UINT8"],
          f"datatype model metadata: {md}")
    pixels = np.array([[0, 7, 200, 255]], dtype=np.uint8)
    offset = np.array([[-5, 3, 100000, -255]], dtype=np.int32)
    scale = np.array([-9_000_000_000], dtype=np.int64)  # beyond INT32, so INT64 must travel whole
    s = pixels.astype(np.int32) + offset
    for binary in (False, True):
        r = client.infer("dtypes", [tensor("pixels", pixels, binary), tensor("offset", offset, binary),
                                    tensor("scale", scale, binary)],
                         outputs=[httpclient.InferRequestedOutput(n, binary_data=binary)
                                  for n in ("sum", "shift", "mean", "floor")])
        form = "binary" if binary else "JSON"
        check(r.as_numpy("sum").dtype == np.int32 and np.array_equal(r.as_numpy("sum"), s), f"{form}: INT32 out")
        check(r.as_numpy("shift").dtype == np.int64 and r.as_numpy("shift").tolist() == [-4_000_000_000],
              f"{form}: INT64 beyond 32 bits in and out ({r.as_numpy('shift')})")
        check(np.allclose(r.as_numpy("mean"), s.astype(np.float32).mean(axis=1, keepdims=True)), f"{form}: FP32 out")
        check(r.as_numpy("floor").dtype == np.uint8
              and np.array_equal(r.as_numpy("floor"), np.maximum(pixels, 10)), f"{form}: UINT8 out")
    # No outputs named: tritonclient asks for all of them in binary.
    r = client.infer("dtypes", [tensor("pixels", pixels, True), tensor("offset", offset, True),
                                tensor("scale", scale, True)])
    check(np.array_equal(r.as_numpy("sum"), s), "all outputs when none is named")
    # A stateless raw model is cached: the same tensors again come from the cache with the same answer.
    before = json.load(urllib.request.urlopen(f"http://{URL}/v1/status"))["models"]["dtypes"]["counters"]
    r2 = client.infer("dtypes", [tensor("pixels", pixels, False), tensor("offset", offset, True),
                                 tensor("scale", scale, False)])
    after = json.load(urllib.request.urlopen(f"http://{URL}/v1/status"))["models"]["dtypes"]["counters"]
    check(after["cache_hits"] == before["cache_hits"] + 1 and r2.as_numpy("shift").tolist() == [-4_000_000_000],
          f"a repeat of a stateless raw model's request is a cache hit: {before} -> {after}")
    refused(lambda: client.infer("dtypes", [tensor("pixels", np.array([[1, 2, 3, 4]], dtype=np.int32), True),
                                            tensor("offset", offset, True), tensor("scale", scale, True)]),
            "UINT8 input sent as INT32", 400)


URL = None


def main():
    global URL
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--models", required=True)
    args = ap.parse_args()
    URL = args.url
    client = httpclient.InferenceServerClient(url=args.url)
    check(client.is_model_ready("silero-vad") and client.is_model_ready("dtypes"), "both raw models ready")
    vad(client, args.models, args.url)
    dtypes(client)
    print("all checks passed")


if __name__ == "__main__":
    main()
