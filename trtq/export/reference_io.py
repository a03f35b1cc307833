"""Reference inputs and outputs beside an export, in Polygraphy's formats, so any backend can be compared with
the PyTorch quantized model by one standard command:

    polygraphy run DIR/model.onnx --onnxrt --load-inputs DIR/io/inputs.json --load-outputs DIR/io/outputs.json
    polygraphy run DIR/model.onnx --trt --plugins ... (same --load-* flags) on a machine with TensorRT

`inputs.json` is a list with one feed (input name -> array in the graph's input dtype); `outputs.json` is a
Polygraphy `RunResults` with one iteration of the runner "trtq-pytorch": the quantized PyTorch model's output
on those inputs (float32). Polygraphy is optional: without it the export still works and this step says why
it was skipped.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trtq.errors import TrtqError
from trtq.export.inputs import DenoiserSignature, DenoiserWrapper

IO_DIR = "io"
RUNNER = "trtq-pytorch"


def polygraphy_missing() -> str | None:
    if importlib.util.find_spec("polygraphy") is None:
        return "polygraphy is not installed (pip install polygraphy)"
    return None


def check_reference_io(dtype: str) -> None:
    """Refuse reference I/O where it cannot be written, before any export work: Polygraphy's JSON formats
    are needed, and NumPy has no bfloat16 for the inputs."""
    missing = polygraphy_missing()
    if missing:
        raise TrtqError(f"reference I/O needs Polygraphy's JSON formats: {missing}")
    if dtype == "bfloat16":
        raise TrtqError("reference I/O needs float16 or float32 inputs (NumPy has no bfloat16)")


def reference_inputs(model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict:
    """The example inputs, with the timestep set to a calibrated one where the model has per-timestep tables
    (the PyTorch model refuses any other)."""
    from trtq.nn.timestep import table_quantizers

    tables = [q for _, q in table_quantizers(model)]
    if not tables:
        return dict(inputs)
    t = float(tables[0].timesteps[-1])
    return {**inputs, "timestep": torch.full_like(inputs["timestep"], t)}


def write_reference_io(model: nn.Module, sig: DenoiserSignature, inputs: dict[str, torch.Tensor],
                       input_dtypes: dict[str, str], out_dir: Path) -> Path:
    """Write io/inputs.json and io/outputs.json into out_dir (after `check_reference_io`); returns the io
    directory."""
    from polygraphy.comparator import RunResults
    from polygraphy.comparator.struct import IterationResult
    from polygraphy.json import save_json

    feed = reference_inputs(model, inputs)
    with torch.no_grad():
        out = DenoiserWrapper(model, sig).eval()(*feed.values())
    arrays = {k: v.detach().cpu().numpy().astype(_np_dtype(input_dtypes[k])) for k, v in feed.items()}
    io = out_dir / IO_DIR
    io.mkdir(parents=True, exist_ok=True)
    save_json([arrays], str(io / "inputs.json"))
    results = RunResults()
    results.append((RUNNER, [IterationResult({"out_sample": out.float().cpu().numpy()}, runner_name=RUNNER)]))
    results.save(str(io / "outputs.json"))
    return io


def _np_dtype(onnx_name: str):
    names = {"float": np.float32, "float16": np.float16, "double": np.float64, "int64": np.int64,
             "int32": np.int32}
    if onnx_name not in names:  # bfloat16: NumPy has no such type for Polygraphy's JSON
        raise TrtqError(f"reference I/O for a graph input of type {onnx_name} is not supported (NumPy has no "
                        "bfloat16); export in float16 or float32 for the reference check")
    return names[onnx_name]
