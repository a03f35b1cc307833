"""The converter's first half: a quantized denoiser -> a strongly typed ONNX graph with `trtq` plugin nodes.

    lower(model)                              quantized layers -> export twins (trtq.export.twins)
    export_onnx(model, out_dir, ...)          model.onnx + manifest.json (see docs/export.md)
    summarize(path) / format_summary(s)       nodes per op type and precision, plugins, initializer bytes
"""

from trtq.export.lower import lower
from trtq.export.onnx import export_onnx, format_summary, summarize

__all__ = ["export_onnx", "format_summary", "lower", "summarize"]
