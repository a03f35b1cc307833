"""`export_onnx`: a quantized denoiser as a strongly typed ONNX graph with `trtq` plugin nodes.

Pipeline: lower the quantized model to export twins (`trtq.export.lower`), cast the float parts to the
export dtype (plugin tensors stay as their contracts say), trace with the TorchScript ONNX exporter, then
post-process the ModelProto:
- code initializers are retyped to what torch cannot hold (INT4, FLOAT8E4M3FN);
- every plugin node gets a function overload, and each overload a model-local function (domain `trtq`,
  name = the plugin's op type) whose body is the node's reference decomposition, traced from the same torch
  code; ONNX Runtime (or TensorRT 10.7+ when no plugin of that name is registered) runs the body;
- the graph, `manifest.json` (what a builder needs) and, over 2 GB, external data are written into a
  temporary sibling directory renamed into place.

Why the TorchScript exporter (`dynamo=False`) and not `torch.onnx.export(dynamo=True)`: each twin says
exactly which nodes it becomes through `autograd.Function.symbolic` (Q/DQ with their element types, one
custom-domain node per plugin with declared attributes), with no graph rewriting; and it exports the zoo UNet
in ~0.9 s against ~16 s for the dynamo exporter on this 2-core CPU, which decides whether CI can prove
every recipe family on six denoisers. Shapes taken from `x.shape` are traced as Shape ops, so batch and
resolution stay dynamic.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from trtq.errors import TrtqError
from trtq.export import twins
from trtq.export.inputs import DenoiserSignature, DenoiserWrapper, signature_of
from trtq.export.lower import lower
from trtq.export.tensorrt_support import tensorrt_blockers

OPSET = 21  # blocked DequantizeLinear and the INT4 element type
# Opset 22 adds bfloat16 to Conv, InstanceNormalization and the other ops that lacked it, with no change of
# semantics: a bfloat16 graph is traced at OPSET and its default-domain import raised to this.
BF16_OPSET = 22
MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
EXTERNAL_DATA = "model.onnx.data"
EXTERNAL_DATA_BYTES = 2**31 - 2**26  # protobuf's 2 GB limit, with headroom for the graph itself
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------- public verb
def export_onnx(model: nn.Module, out_dir: str | Path, example_inputs: dict[str, torch.Tensor] | None = None,
                dynamic: bool = True, dtype: str = "float16", *, batch: tuple[int, int, int] = (1, 2, 4),
                resolution: tuple[int, int, int] | None = None, model_name: str | None = None,
                artifact: str | Path | None = None, reference_io: bool = False,
                external_data_bytes: int = EXTERNAL_DATA_BYTES) -> Path:
    """Export a quantized diffusers denoiser to `out_dir/model.onnx` + `out_dir/manifest.json`.

    example_inputs: tensors by input name in the order of the denoiser's signature (see `signature_of`);
    default: the opt batch at the opt resolution. dynamic: batch and resolution axes are symbolic (ranges in
    the manifest's profiles). resolution: (min, opt, max) latent height = width; default: the model's
    sample_size for all three. reference_io: also write io/inputs.json + io/outputs.json (the example inputs and
    the PyTorch quantized model's output, in Polygraphy's formats; see `trtq.export.reference_io`).
    Returns out_dir.
    """
    out = Path(out_dir)
    check_out_dir(out)
    if dtype not in DTYPES:
        raise TrtqError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if reference_io:
        from trtq.export.reference_io import check_reference_io

        check_reference_io(dtype)
    _check_range("batch", batch)
    sig = signature_of(model)
    size = int(getattr(model.config, "sample_size", 32) or 32)
    resolution = resolution or (size, size, size)
    _check_range("resolution", resolution)
    if not sig.resolution_dynamic and dynamic and resolution[0] != resolution[2]:
        raise TrtqError(f"this {type(model).__name__} configuration exports at one resolution (its position "
                        f"table is computed in Python for the traced size); give --resolution R:R:R, got "
                        f"{tuple(resolution)}")
    if example_inputs is None:
        example_inputs = sig.example_inputs(batch[1], resolution[1], resolution[1])
    names = sig.input_names()
    if list(example_inputs) != names:
        raise TrtqError(f"example_inputs must be {names} in this order, got {list(example_inputs)}")

    t0 = time.perf_counter()
    lowered = lower(model)
    if dynamic and sig.patch_grid_dynamic:
        from trtq.export.dynamic import make_resolution_dynamic

        make_resolution_dynamic(lowered)
    cast_float(lowered, DTYPES[dtype])
    wrapper = DenoiserWrapper(lowered, sig).eval()
    # The timestep stays float32 at every dtype: bfloat16 holds integers exactly only up to 256 (999 would be
    # 1000), and diffusers computes the sinusoidal timestep embedding in float32 and casts it to the model dtype.
    args = tuple(t.to(DTYPES[dtype]) if t.is_floating_point() and name != "timestep" else t
                 for name, t in example_inputs.items())
    with tempfile.TemporaryDirectory(prefix=".trtq-export-") as tmp:
        calls = _record_plugin_calls(wrapper)
        path = Path(tmp) / MODEL_FILE
        with torch.no_grad():
            torch.onnx.export(wrapper, args, str(path), dynamo=False, opset_version=OPSET, input_names=names,
                              output_names=["out_sample"], autograd_inlining=False,
                              dynamic_axes=sig.dynamic_axes(resolution=True) if dynamic else None)
        for h in calls.pop("_hooks"):
            h.remove()
        proto = onnx.load(str(path))
    finalize(proto, calls, DTYPES[dtype])
    if dtype == "bfloat16":
        raise_opset(proto, BF16_OPSET)
    seconds = time.perf_counter() - t0
    manifest = build_manifest(proto, model, sig, dtype, dynamic, batch, resolution, model_name, artifact, seconds)
    extra = None
    if reference_io:
        from trtq.export.reference_io import IO_DIR, write_reference_io

        dtypes = {i["name"]: i["dtype"] for i in manifest["inputs"]}
        manifest["reference_io"] = {
            "inputs": f"{IO_DIR}/inputs.json", "outputs": f"{IO_DIR}/outputs.json",
            "check": f"polygraphy run {MODEL_FILE} --onnxrt --graph-optimization-level ORT_ENABLE_BASIC "
                     f"--load-inputs {IO_DIR}/inputs.json --load-outputs {IO_DIR}/outputs.json"}
        extra = lambda d: write_reference_io(model, sig, example_inputs, dtypes, d)  # noqa: E731
    write_export(out, proto, manifest, external_data_bytes, extra)
    return out


def _check_range(what: str, r) -> None:
    if len(r) != 3 or not all(isinstance(v, int) and v >= 1 for v in r) or not r[0] <= r[1] <= r[2]:
        raise TrtqError(f"{what} range must be three positive integers MIN <= OPT <= MAX, got {tuple(r)}")


def check_out_dir(out: Path) -> None:
    """An export may replace an earlier export or fill an empty directory; anything else is refused."""
    if out.exists() and not out.is_dir():
        raise TrtqError(f"--out {out} is a file; give a directory for model.onnx and manifest.json")
    if out.is_dir() and any(out.iterdir()) and not _is_export(out):
        raise TrtqError(f"{out} exists and is not a trtq ONNX export; refusing to overwrite it")


def _is_export(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST).read_text()).get("kind") == "trtq-onnx"
    except (OSError, ValueError, AttributeError):
        return False


def cast_float(model: nn.Module, dtype: torch.dtype) -> None:
    """Floating tensors to the export dtype, except the plugin twins' (their contracts fix FP32 scales and
    transforms; the plugin casts its output to the activation dtype) and the buffers a twin lists in its
    FLOAT32_BUFFERS (a timestep table's timesteps)."""
    for mod in model.modules():
        if isinstance(mod, (twins.WinogradConvInt8, twins.FP4GroupGemm)):
            continue
        for k, p in mod._parameters.items():
            if p is not None and p.is_floating_point():
                mod._parameters[k] = nn.Parameter(p.detach().to(dtype), requires_grad=False)
        for k, t in mod._buffers.items():
            if t is not None and t.is_floating_point() and k not in getattr(mod, "FLOAT32_BUFFERS", ()):
                mod._buffers[k] = t.to(dtype)


# --------------------------------------------------------------------------------------- plugin bodies
def _record_plugin_calls(wrapper: nn.Module) -> dict:
    """Forward hooks that remember, during the trace, each plugin node's overload and example inputs."""
    calls: dict[str, Any] = {}
    hooks = []

    def hook(mod, inputs, _out):
        call = mod.plugin_call(inputs[0])
        if call is None:
            return
        op_type, attrs, tensors = call
        present = tuple(t is not None for t in tensors)
        key = twins.plugin_overload(op_type, json.loads(json.dumps(attrs)), present, tensors[0].dim())
        if key not in calls:
            calls[key] = (op_type, attrs, [None if t is None else t.detach().clone() for t in tensors])

    for mod in wrapper.modules():
        if isinstance(mod, twins.PLUGIN_TWINS):
            hooks.append(mod.register_forward_hook(hook))
    calls["_hooks"] = hooks
    return calls


class _Body(nn.Module):
    def __init__(self, fn, present):
        super().__init__()
        self.fn, self.present = fn, present

    def forward(self, *args):
        it = iter(args)
        return self.fn(*[next(it) if p else None for p in self.present])


def plugin_function(op_type: str, overload: str, key: str, attrs: dict, tensors: list, dtype: torch.dtype):
    """The model-local FunctionProto (trtq, op_type, overload) whose body is the reference decomposition,
    traced from `twins.plugin_reference` for this node structure with dynamic activation shapes."""
    formal, _ = twins.PLUGINS[op_type]
    present = [t is not None for t in tensors]
    args = [t for t in tensors if t is not None]
    args[0] = torch.zeros(args[0].shape, dtype=dtype)
    names = [n for n, p in zip(formal, present) if p]
    # Every dim of every input symbolic: sizes are traced as Shape ops, so one body serves all layers and
    # all activation shapes with this structure (the overload key holds only attributes and input presence).
    axes = {name: {i: f"{name}_{i}" for i in range(t.dim())} for name, t in zip(names, args)}
    axes["y"] = {}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        path = os.path.join(tmp, "body.onnx")
        torch.onnx.export(_Body(twins.plugin_reference(op_type, attrs), present), tuple(args), path,
                          dynamo=False, opset_version=OPSET, input_names=names, output_names=["y"],
                          dynamic_axes=axes)
        body = onnx.load(path)
    nodes = [helper.make_node("Constant", [], [init.name], value=init) for init in body.graph.initializer]
    nodes += list(body.graph.node)
    return helper.make_function(twins.PLUGIN_DOMAIN, op_type, list(formal), ["y"], nodes,
                                [helper.make_opsetid("", OPSET)], overload=overload,
                                doc_string=f"reference decomposition of trtq::{op_type} for {key}")


# --------------------------------------------------------------------------------------- post-processing
def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _drop_attr(node: onnx.NodeProto, name: str) -> None:
    keep = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(keep)


def _retype(init: TensorProto, code_type: str) -> None:
    """Re-encode an int8 (INT4 values) or uint8 (FP8 bits) initializer as its real ONNX element type."""
    target = TensorProto.INT4 if code_type == "int4" else TensorProto.FLOAT8E4M3FN
    if init.data_type == target:  # already retyped: a module called twice (DiT's shared timestep embedder)
        return                    # gives two nodes on one initializer; converting again would corrupt it
    arr = numpy_helper.to_array(init)
    if code_type == "int4":
        new = helper.make_tensor(init.name, TensorProto.INT4, arr.shape, arr.astype("int8").flatten().tolist())
    else:
        new = helper.make_tensor(init.name, TensorProto.FLOAT8E4M3FN, arr.shape, arr.astype("uint8").tobytes(),
                                 raw=True)
    init.CopyFrom(new)


def finalize(proto: onnx.ModelProto, calls: dict, dtype: torch.dtype) -> None:
    """Retype codes, name overloads, attach the plugin functions, set opsets. In place."""
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    for node in graph.node:
        code = _attr(node, "trtq_code_type")
        if code is None:
            continue
        code = code.decode()
        _drop_attr(node, "trtq_code_type")
        if code == "int8":
            continue
        # Q: the zero point fixes the output type. DQ: the codes (and their zero point) are initializers.
        slots = (2,) if node.op_type == "QuantizeLinear" else (0, 2)
        for i in slots:
            if i < len(node.input) and node.input[i] in inits:
                _retype(inits[node.input[i]], code)
    overloads: dict[str, str] = {}
    for node in graph.node:
        if node.domain != twins.PLUGIN_DOMAIN:
            continue
        key = _attr(node, "trtq_overload").decode()
        _drop_attr(node, "trtq_overload")
        if key not in calls:
            raise RuntimeError(f"no recorded call for plugin node {node.name} ({key})")
        overloads.setdefault(key, f"v{len(overloads)}")
        node.overload = overloads[key]
    for key, overload in overloads.items():
        op_type, attrs, tensors = calls[key]
        proto.functions.append(plugin_function(op_type, overload, key, attrs, tensors, dtype))
    if proto.functions:
        proto.opset_import.append(helper.make_opsetid(twins.PLUGIN_DOMAIN, 1))
    proto.ir_version = max(proto.ir_version, 10)  # function overloads
    proto.producer_name = "trtq"
    _fold_squeeze_ifs(proto)
    _permuting_einsums_to_transposes(proto)


def _permuting_einsums_to_transposes(proto: onnx.ModelProto) -> None:
    """diffusers' DiT/PixArt unpatchify is `torch.einsum("nhwpqc->nchpwq", x)`, a pure permutation. ONNX's
    Einsum has no bfloat16 type at any opset (and TensorRT runs a Transpose better): a one-input Einsum whose
    output letters are its input letters reordered becomes that Transpose."""
    for node in proto.graph.node:
        if node.op_type != "Einsum" or node.domain or len(node.input) != 1:
            continue
        eq = helper.get_attribute_value(node.attribute[0]).decode().replace(" ", "")
        lhs, _, rhs = eq.partition("->")
        if "." in eq or len(set(lhs)) != len(lhs) or sorted(lhs) != sorted(rhs):
            continue
        del node.attribute[:]
        node.op_type = "Transpose"
        node.attribute.append(helper.make_attribute("perm", [lhs.index(c) for c in rhs]))


def opset_of(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def raise_opset(proto: onnx.ModelProto, version: int) -> None:
    """The default-domain opset of the graph and of every local function, raised to `version` (only for
    opsets that add types without changing any op's semantics: 21 -> 22)."""
    for imports in [proto.opset_import] + [f.opset_import for f in proto.functions]:
        for o in imports:
            if o.domain in ("", "ai.onnx"):
                o.version = max(o.version, version)


def _fold_squeeze_ifs(proto: onnx.ModelProto) -> None:
    """`x.squeeze(d)` on a size the tracer could not see exports as If(dim == 1, Squeeze, Identity); where
    ONNX shape inference knows the size is not 1 the Squeeze branch is ill-typed (the checker rejects it) and
    dead, so the If becomes the Identity it always is."""
    ifs = [n for n in proto.graph.node if n.op_type == "If"]
    if not ifs:
        return
    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {v.name: v.type.tensor_type.shape for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    for node in ifs:
        br = {a.name: a.g for a in node.attribute}
        then, other = br["then_branch"].node, br["else_branch"].node
        if len(other) != 1 or other[0].op_type != "Identity" or not then or then[-1].op_type != "Squeeze":
            continue
        x = other[0].input[0]
        consts = {c.output[0]: numpy_helper.to_array(c.attribute[0].t) for c in then if c.op_type == "Constant"}
        axes = consts.get(then[-1].input[1]) if len(then[-1].input) > 1 else None
        shape = shapes.get(x)
        if axes is None or shape is None or axes.size != 1 or int(axes.reshape(-1)[0]) >= len(shape.dim):
            continue
        dim = shape.dim[int(axes.reshape(-1)[0])]
        if dim.HasField("dim_value") and dim.dim_value != 1:
            out = node.output[0]
            del node.attribute[:]
            node.op_type, node.domain = "Identity", ""
            node.input[:] = [x]
            node.output[:] = [out]


# --------------------------------------------------------------------------------------- manifest + files
_ELEM = {v: k for k, v in TensorProto.DataType.items()}


def _elem_name(t: int) -> str:
    return _ELEM[t].lower()


def _value_spec(v: onnx.ValueInfoProto) -> dict:
    tt = v.type.tensor_type
    shape = [d.dim_param if d.dim_param else d.dim_value for d in tt.shape.dim]
    return {"name": v.name, "dtype": _elem_name(tt.elem_type), "shape": shape}


def build_manifest(proto, model, sig: DenoiserSignature, dtype, dynamic, batch, resolution, model_name, artifact,
                   seconds) -> dict:
    from trtq import __version__
    from trtq.artifact import module_fingerprint

    recipe = getattr(model, "trtq_recipe", None)
    inputs = [_value_spec(v) for v in proto.graph.input]
    profiles = {}
    for spec in inputs:
        prof = {}
        for level, i in (("min", 0), ("opt", 1), ("max", 2)):
            dims = []
            for d in spec["shape"]:
                dims.append(batch[i] if d == "batch" else resolution[i] if d in ("height", "width") else d)
            prof[level] = dims
        profiles[spec["name"]] = prof
    plugins = Counter(n.op_type for n in proto.graph.node if n.domain == twins.PLUGIN_DOMAIN)
    aot = Counter(n.op_type for n in proto.graph.node if n.domain == twins.PLUGIN_DOMAIN
                  and any(a.name == "aot" and a.i == 1 for a in n.attribute))
    return {
        "format_version": FORMAT_VERSION,
        "kind": "trtq-onnx",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": model_name, "class": type(model).__name__, "fingerprint": module_fingerprint(model),
                  "signature": sig.kind},
        "recipe": None if recipe is None else recipe.to_dict(),
        "artifact": None if artifact is None else str(artifact),
        "onnx": {"file": MODEL_FILE, "opset": opset_of(proto), "ir_version": proto.ir_version, "dtype": dtype,
                 "strongly_typed": True, "dynamic": dynamic},
        "inputs": inputs,
        "outputs": [_value_spec(v) for v in proto.graph.output],
        "profiles": profiles,
        "plugins": [{"name": name, "namespace": twins.PLUGIN_DOMAIN, "version": twins.PLUGIN_VERSION,
                     "nodes": count, "aot_nodes": aot[name], "attributes": list(twins.PLUGINS[name][1]),
                     "local_function": True} for name, count in sorted(plugins.items())],
        "timestep_tables": timestep_tables(model),
        "tensorrt": {"blockers": tensorrt_blockers(proto)},  # [] = TensorRT's parser takes every node
        "export_seconds": round(seconds, 3),
        "versions": {"trtq": __version__, "torch": torch.__version__, "onnx": onnx.__version__},
    }


def timestep_tables(model: nn.Module) -> dict | None:
    """The calibrated timesteps a graph with per-timestep scale tables serves exactly (those every table
    has), for runtimes to check what they feed: in the graph an uncalibrated step takes the nearest row."""
    from trtq.nn.timestep import table_quantizers

    tables = [q for _, q in table_quantizers(model)]
    if not tables:
        return None
    common = set(tables[0].timesteps.tolist()).intersection(*(q.timesteps.tolist() for q in tables[1:]))
    strict = any(q.on_unknown == "error" for q in tables)
    return {"timesteps": sorted(common), "layers": len(tables), "on_unknown": "error" if strict else "nearest"}


def write_export(out: Path, proto: onnx.ModelProto, manifest: dict, external_data_bytes: int,
                 extra=None) -> None:
    """model.onnx (+ external data over the limit), manifest.json and whatever `extra(dir)` writes, into a
    temp sibling renamed into place."""
    check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)
    old = None
    try:
        external = sum(len(i.raw_data) for i in proto.graph.initializer) > external_data_bytes
        manifest["onnx"]["external_data"] = EXTERNAL_DATA if external else None
        onnx.save_model(proto, str(tmp / MODEL_FILE), save_as_external_data=external,
                        all_tensors_to_one_file=True, location=EXTERNAL_DATA, size_threshold=1024)
        if extra is not None:
            extra(tmp)
        mtmp = tmp / f".{MANIFEST}.tmp"
        mtmp.write_text(json.dumps(manifest, indent=2) + "\n")
        mtmp.replace(tmp / MANIFEST)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "x")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------- summary
def summarize(path: str | Path) -> dict:
    """Nodes per (op type, precision), plugin nodes, initializer bytes by element type, of an ONNX file."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (OSError, onnx.onnx_cpp2py_export.checker.ValidationError, Exception) as e:  # noqa: B014
        raise TrtqError(f"cannot read ONNX model {path}: {e}") from None
    g = proto.graph
    elem = {i.name: i.data_type for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}

    def code_type(name: str) -> str:
        n = producer.get(name)
        while n is not None and n.op_type in ("Cast", "Identity", "Transpose", "Reshape"):
            n = producer.get(n.input[0])
        if n is None or n.op_type != "DequantizeLinear":
            return "float"
        src = n.input[0]
        if src in elem:
            return _elem_name(elem[src])
        q = producer.get(src)
        if q is not None and q.op_type == "QuantizeLinear" and len(q.input) > 2 and q.input[2] in elem:
            return _elem_name(elem[q.input[2]])
        return "int8"

    nodes = Counter()
    for n in g.node:
        if n.op_type in ("Conv", "MatMul", "Gemm"):
            prec = f"a:{code_type(n.input[0])} w:{code_type(n.input[1])}"
        elif n.domain == twins.PLUGIN_DOMAIN:
            a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
            dec = {k: v.decode() if isinstance(v, bytes) else v for k, v in a.items()}
            prec = {"WinogradConvInt8": "a:int8 w:int8",
                    "FP4GroupGemm": f"a:{dec.get('act_format')} w:{dec.get('weight_format')}",
                    "DynamicGroupQDQ": f"{dec.get('format')} g={dec.get('group_size')}"}.get(n.op_type, "")
        elif n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            prec = code_type(n.output[0]) if n.op_type == "DequantizeLinear" else ""
        else:
            prec = ""
        nodes[(f"{n.domain}::{n.op_type}" if n.domain else n.op_type, prec)] += 1
    init_bytes = Counter()
    for i in g.initializer:
        size = len(i.raw_data) or onnx.helper.tensor_dtype_to_np_dtype(i.data_type).itemsize * _numel(i)
        init_bytes[_elem_name(i.data_type)] += size
    return {
        "file": str(path), "bytes": path.stat().st_size, "opset": {o.domain or "ai.onnx": o.version
                                                                   for o in proto.opset_import},
        "nodes": [{"op": op, "precision": p, "count": c} for (op, p), c in sorted(nodes.items())],
        "plugins": {op: c for (op, _), c in nodes.items() if op.startswith(f"{twins.PLUGIN_DOMAIN}::")},
        "functions": [f"{f.domain}::{f.name}:{f.overload} ({len(f.node)} nodes)" for f in proto.functions],
        "initializer_bytes": dict(init_bytes),
        "tensorrt_blockers": tensorrt_blockers(proto),
    }


def _numel(t: TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= d
    return n


def format_summary(s: dict) -> str:
    lines = [f"{s['file']}: {s['bytes'] / 1e6:.2f} MB, opsets {s['opset']}"]
    lines.append(f"{'op':<28} {'precision':<24} nodes")
    for row in s["nodes"]:
        lines.append(f"{row['op']:<28} {row['precision']:<24} {row['count']}")
    lines.append("plugin nodes: " + (", ".join(f"{k} x{v}" for k, v in s["plugins"].items()) or "none"))
    lines.append("initializer bytes: " + ", ".join(f"{k} {v}" for k, v in sorted(s["initializer_bytes"].items())))
    blockers = s.get("tensorrt_blockers") or []
    lines.append("TensorRT: " + ("every Q/DQ node symmetric (parser-ready)" if not blockers else
                                 "cannot build: " + "; ".join(blockers)))
    return "\n".join(lines)

