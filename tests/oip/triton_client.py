"""The Open Inference Protocol v2 against a running Outpost agent, driven by the real `tritonclient` HTTP client (as
an ML engineer's existing code would call Triton). Run by tests/it/oip.rs with the venv of scripts/lib/pyenv.sh:

    python tests/oip/triton_client.py --url 127.0.0.1:PORT --models models --image models/data/test/0003_2.png

Prints one line per check; exits non-zero with the failing check's message on the first failure.
"""

import argparse
import json
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException
from PIL import Image


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def refused(fn, what, code):
    """`fn` must fail with HTTP status `code` (a 4xx with an error message)."""
    try:
        fn()
    except InferenceServerException as e:
        check(str(e.status()) == str(code), f"{what}: {code} ({e.message()})")
        return
    check(False, f"{what} was accepted")


def digit_tensor(path, spec):
    """The edge model's preprocessing, written out here as a client would: gray 28x28, scaled and normalised."""
    img = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    p = spec["preprocess"]
    x = (img / p["scale"] - p["mean"][0]) / p["std"][0]
    return x.reshape(spec["input"]["shape"]).astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--label", required=True)
    ap.add_argument("--model", default="edge-int8")
    args = ap.parse_args()
    spec = json.load(open(f"{args.models}/edge-int8.spec.json"))
    client = httpclient.InferenceServerClient(url=args.url)

    check(client.is_server_live(), "server live")
    check(client.is_server_ready(), "server ready")
    meta = client.get_server_metadata()
    check("binary_tensor_data" in meta["extensions"], f"server metadata names its extensions: {meta}")
    check(client.is_model_ready(args.model), "model ready")
    md = client.get_model_metadata(args.model)
    check(md["name"] == args.model and md["inputs"][0]["name"] == spec["input"]["name"], f"model metadata: {md}")
    check(md["inputs"][0]["shape"] == spec["input"]["shape"] and md["inputs"][0]["datatype"] == "FP32",
          "input shape and datatype")
    version = md["versions"][0]
    check(client.is_model_ready(args.model, model_version=version), f"version {version} ready")
    check(client.get_model_metadata(args.model, model_version=version)["name"] == args.model, "version metadata")

    x = digit_tensor(args.image, spec)
    want = int(args.label)
    for binary in (False, True):
        inp = httpclient.InferInput(spec["input"]["name"], list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = httpclient.InferRequestedOutput(spec["output"]["name"], binary_data=binary)
        r = client.infer(args.model, [inp], outputs=[out])
        logits = r.as_numpy(spec["output"]["name"])
        form = "binary" if binary else "JSON"
        check(logits is not None and logits.shape == (1, len(spec["labels"])), f"{form} tensors: output shape")
        check(int(np.argmax(logits)) == want, f"{form} tensors: the right digit ({np.argmax(logits)} vs {want})")
        check(r.get_response()["model_version"] == version, f"{form} tensors: the answer names model_version")

    # Triton's classification extension: the top 3 as "score:index:label".
    inp = httpclient.InferInput(spec["input"]["name"], list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    out = httpclient.InferRequestedOutput(spec["output"]["name"], binary_data=True, class_count=3)
    r = client.infer(args.model, [inp], outputs=[out])
    top = [b.decode() for b in r.as_numpy(spec["output"]["name"]).reshape(-1)]
    check(len(top) == 3 and top[0].split(":")[2] == spec["labels"][want], f"classification: {top}")

    # An encoded image as BYTES under the model's input name, preprocessed by the agent.
    raw = open(args.image, "rb").read()
    inp = httpclient.InferInput(spec["input"]["name"], [1], "BYTES")
    inp.set_data_from_numpy(np.array([raw], dtype=np.object_), binary_data=True)
    out = httpclient.InferRequestedOutput(spec["output"]["name"], binary_data=False, class_count=1)
    r = client.infer(args.model, [inp], outputs=[out])
    top = r.as_numpy(spec["output"]["name"]).reshape(-1)
    label = (top[0].decode() if isinstance(top[0], bytes) else str(top[0])).split(":")[2]
    check(label == spec["labels"][want], f"encoded image as BYTES: {top}")

    # Bad requests: a 4xx with an error, and nothing else changes.
    wrong = np.zeros((1, 1, 27, 28), dtype=np.float32)
    inp = httpclient.InferInput(spec["input"]["name"], list(wrong.shape), "FP32")
    inp.set_data_from_numpy(wrong, binary_data=True)
    refused(lambda: client.infer(args.model, [inp]), "wrong shape", 400)
    ints = np.zeros(spec["input"]["shape"], dtype=np.int32)
    inp = httpclient.InferInput(spec["input"]["name"], list(ints.shape), "INT32")
    inp.set_data_from_numpy(ints, binary_data=True)
    refused(lambda: client.infer(args.model, [inp]), "wrong datatype", 400)
    inp = httpclient.InferInput("not-the-input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    refused(lambda: client.infer(args.model, [inp]), "unknown input", 400)
    inp = httpclient.InferInput(spec["input"]["name"], list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    refused(lambda: client.infer("no-such-model", [inp]), "unknown model", 404)
    refused(lambda: client.get_model_metadata("no-such-model"), "unknown model metadata", 404)
    refused(lambda: client.infer(args.model, [inp], model_version="999"), "unknown version", 404)
    r = client.infer(args.model, [inp])
    check(int(np.argmax(r.as_numpy(spec["output"]["name"]))) == want, "still serving after the bad requests")
    print("all checks passed")


if __name__ == "__main__":
    main()
