"""trtq: quantize diffusers UNets and DiTs, and run them fast on NVIDIA GPUs.

The public verbs:
    quantize(model, recipe, calib_loop)     replace Conv2d/Linear by quantized layers and calibrate
    save_artifact(model, path, name)        calibrated scales -> safetensors + JSON manifest
    load_artifact(model, path)              re-quantize a float model from an artifact (refuses foreign ones)
    release_float_weights(model)            free the float weights of FP4 layers (inference reads the 4-bit codes)
    list_recipes(), get_recipe(name)        recipes are data (YAML)
    export_onnx(model, out_dir, ...)        quantized denoiser -> ONNX with trtq plugin nodes + manifest
    build_engine(export_dir, ...)           ONNX export -> cached TensorRT engine (needs TensorRT + a GPU)
    accelerate(pipe, source, backend=...)   swap a pipeline's denoiser for an accelerated one; restore(pipe)
"""

__version__ = "0.1.0"

from trtq.artifact import load_artifact, read_manifest, save_artifact  # noqa: E402
from trtq.engine import build_engine  # noqa: E402
from trtq.errors import TrtqError  # noqa: E402
from trtq.export import export_onnx  # noqa: E402
from trtq.quantize import calibrate, prepare, quantize, release_float_weights  # noqa: E402
from trtq.runtime import accelerate, restore  # noqa: E402
from trtq.recipes import LayerRule, Recipe, get_recipe, list_recipes  # noqa: E402
from trtq.scheme import QuantScheme  # noqa: E402

__all__ = [
    "LayerRule", "QuantScheme", "Recipe", "TrtqError", "accelerate", "build_engine", "calibrate", "export_onnx", "get_recipe", "list_recipes",
    "load_artifact", "prepare", "quantize", "read_manifest", "release_float_weights", "restore", "save_artifact", "__version__",
]
