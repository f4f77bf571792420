#!/usr/bin/env python3
"""Builds models/dtypes/dtypes.onnx: a tiny raw tensor model whose inputs and outputs are UINT8, INT32, INT64 and FP32,
so that the Open Inference Protocol tests carry every datatype Outpost serves through a real client. No weights: the
graph is integer arithmetic whose answer the test computes with numpy.

  inputs   pixels UINT8 [1, 4], offset INT32 [1, 4], scale INT64 [1]
  outputs  sum    INT32 [1, 4] = int32(pixels) + offset
           scaled INT64 [1, 4] = int64(sum) * scale
           shift  INT64 [1]    = scale + 5,000,000,000 (beyond 32 bits both ways)
           mean   FP32  [1, 1] = mean(float(sum)) over the row
           floor  UINT8 [1, 4] = max(pixels, 10)

tract 0.23.9's ONNX front end turns `Cast(to=INT64)` into its symbolic-dimension type, and products there of values
beyond 32 bits came out wrong (3e9 * -5 gave 6,474,836,480: the factor cut to 32 bits) while onnxruntime is right;
so `scaled` is checked with a small scale, and values beyond 32 bits travel through `shift`, which has no Cast.

`dtypes-floor11.onnx` is the same graph with 11 for 10 in `floor`: other bytes, the same tensors, so tests can
release a second version of the model (probation rolls a failing one back to the first).

Run with any venv that has onnx (models/requirements.txt):  python models/make_dtypes.py
"""

from pathlib import Path

import onnx
from onnx import TensorProto, helper

OUT = Path(__file__).resolve().parent / "dtypes"


def build(floor):
    nodes = [
        helper.make_node("Cast", ["pixels"], ["pixels_i32"], to=TensorProto.INT32),
        helper.make_node("Add", ["pixels_i32", "offset"], ["sum"]),
        helper.make_node("Cast", ["sum"], ["sum_i64"], to=TensorProto.INT64),
        helper.make_node("Mul", ["sum_i64", "scale"], ["scaled"]),
        helper.make_node("Cast", ["sum"], ["sum_f32"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["sum_f32"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Max", ["pixels", "ten"], ["floor"]),
        helper.make_node("Add", ["scale", "five_billion"], ["shift"]),
    ]
    ten = helper.make_tensor("ten", TensorProto.UINT8, [1, 4], [floor] * 4)
    five_billion = helper.make_tensor("five_billion", TensorProto.INT64, [1], [5_000_000_000])
    graph = helper.make_graph(
        nodes,
        "dtypes",
        [
            helper.make_tensor_value_info("pixels", TensorProto.UINT8, [1, 4]),
            helper.make_tensor_value_info("offset", TensorProto.INT32, [1, 4]),
            helper.make_tensor_value_info("scale", TensorProto.INT64, [1]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.INT32, [1, 4]),
            helper.make_tensor_value_info("scaled", TensorProto.INT64, [1, 4]),
            helper.make_tensor_value_info("shift", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("mean", TensorProto.FLOAT, [1, 1]),
            helper.make_tensor_value_info("floor", TensorProto.UINT8, [1, 4]),
        ],
        initializer=[ten, five_billion],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="outpost")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main():
    OUT.mkdir(exist_ok=True)
    for floor, name in [(10, "dtypes.onnx"), (11, "dtypes-floor11.onnx")]:
        onnx.save(build(floor), OUT / name)
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
