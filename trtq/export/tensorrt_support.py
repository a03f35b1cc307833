"""What TensorRT's ONNX parser refuses in an exported graph, found at export time rather than mid-build.

TensorRT builds Q/DQ only symmetric: its parser asserts an all-zero zero point ("TRT only supports symmetric
quantization") and takes INT8 / FP8 / INT4 / FP4 codes, not UINT8. The exporter writes every scheme it can in
that form (asymmetric per-tensor INT8 inputs as shifted INT8 codes, asymmetric INT4 weights as INT8
differences: `trtq.export.twins`); what is left (per-channel asymmetric inputs, asymmetric INT8 weights) is a
valid ONNX graph that ONNX Runtime runs, and this module names it so that the manifest says so and
`trtq build` refuses it in one line before TensorRT is even looked for.
"""

from __future__ import annotations

from collections import Counter

import onnx
from onnx import TensorProto, numpy_helper

_QDQ = ("QuantizeLinear", "DequantizeLinear")


def tensorrt_blockers(proto: onnx.ModelProto) -> list[str]:
    """One line per kind of node TensorRT cannot build, with counts and an example node; [] if none."""
    inits = {i.name: i for i in proto.graph.initializer}
    consts = {o: n for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    found: Counter = Counter()
    example: dict[str, str] = {}
    for node in proto.graph.node:
        if node.op_type not in _QDQ or len(node.input) < 3 or not node.input[2]:
            continue
        zp = _constant(node.input[2], inits, consts)
        if zp is None:
            continue
        if zp.data_type == TensorProto.UINT8:
            kind = "uint8"
        elif numpy_helper.to_array(zp).any():
            kind = "nonzero"
        else:
            continue
        key = (node.op_type, kind)
        found[key] += 1
        example.setdefault(key, node.name or node.output[0])
    lines = []
    for (op, kind), n in sorted(found.items()):
        what = "UINT8 codes" if kind == "uint8" else "a nonzero zero point"
        lines.append(f"{n} {op} node(s) with {what} (e.g. {example[(op, kind)]}): TensorRT builds symmetric "
                     "INT8/FP8/INT4 Q/DQ only (an asymmetric INT8 weight or per-channel asymmetric input; "
                     "ONNX Runtime runs the graph)")
    return lines


def _constant(name: str, inits: dict, consts: dict) -> TensorProto | None:
    if name in inits:
        return inits[name]
    node = consts.get(name)
    if node is None:
        return None
    for a in node.attribute:
        if a.name == "value":
            return a.t
    return None
