"""Writes edge-flat.onnx: the edge fp32 CNN with its logits divided by a temperature of 8.

Same labels on almost every input, much lower confidence. It is the "quality degraded" model of the probation tests:
it passes its own golden vectors (so the install gate lets it in) and only the confidence-drift check on live
traffic can catch it. Run from the repository root with the models venv (see models/README.md):

    python models/make_flat.py
"""

import json
import pathlib

import numpy as np
import onnx
from onnx import helper, numpy_helper

HERE = pathlib.Path(__file__).parent
TEMPERATURE = 8.0


def main() -> None:
    model = onnx.load(HERE / "edge-fp32.onnx")
    graph = model.graph
    out = graph.output[0]
    raw = out.name + "_raw"
    for node in graph.node:
        node.output[:] = [raw if o == out.name else o for o in node.output]
    scale = numpy_helper.from_array(np.array(1.0 / TEMPERATURE, dtype=np.float32), "flat_scale")
    graph.initializer.append(scale)
    graph.node.append(helper.make_node("Mul", [raw, "flat_scale"], [out.name], name="flatten_confidence"))
    onnx.checker.check_model(model)
    onnx.save(model, HERE / "edge-flat.onnx")
    spec = json.loads((HERE / "edge-fp32.spec.json").read_text())
    spec["name"] = "edge-flat"
    spec.pop("accuracy", None)
    (HERE / "edge-flat.spec.json").write_text(json.dumps(spec, indent=2) + "\n")
    print("wrote models/edge-flat.onnx (temperature", TEMPERATURE, ")")


if __name__ == "__main__":
    main()
