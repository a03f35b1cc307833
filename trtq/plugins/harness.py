"""Execute a launch plan the way TensorRT executes a plugin's kernels: PTX loaded with the CUDA driver
(cuda-python), each kernel launched with exactly the plan's grid, block, shared memory and argument list.

This is the stand-in for TensorRT on a GPU machine without it: if `run_plan` matches the torch op, the
plugin's PTX, launch parameters and argument order are right. Arguments are passed in the kernel's parameter
order followed by Triton's two scratch pointers (global and profile scratch; null, as the plans' kernels ask
for none: `compile` refuses a kernel that needs scratch memory rather than passing a wrong pointer).
"""

from __future__ import annotations

import ctypes

import torch

from trtq.errors import TrtqError
from trtq.plugins.plans import Launch, LaunchPlan

_modules: dict = {}  # (kernel name, ptx hash) -> (module, function): a module is loaded once per process


def _driver():
    try:
        from cuda.bindings import driver
    except ImportError:
        try:
            from cuda import cuda as driver  # cuda-python < 12.6
        except ImportError as e:
            raise TrtqError("the launch harness needs cuda-python (`pip install cuda-python`)") from e
    return driver


def _check(result, what: str):
    err, *rest = result if isinstance(result, tuple) else (result,)
    driver = _driver()
    if int(err) != int(driver.CUresult.CUDA_SUCCESS):
        name = driver.cuGetErrorName(err)[1]
        raise TrtqError(f"{what} failed: {name.decode() if isinstance(name, bytes) else name}")
    return rest[0] if len(rest) == 1 else rest


def load(compiled) -> object:
    """CUfunction of a compiled Triton kernel, from its PTX (the driver JIT-compiles it, as TensorRT does)."""
    meta = compiled.metadata
    if meta.global_scratch_size or meta.profile_scratch_size:
        raise TrtqError(f"{meta.name} needs {meta.global_scratch_size} B of global scratch: not a plugin kernel")
    ptx = compiled.asm["ptx"]
    key = (meta.name, hash(ptx))
    if key not in _modules:
        driver = _driver()
        torch.cuda.init()  # torch's primary context is the current one
        image = ctypes.create_string_buffer(ptx.encode())  # NUL-terminated, alive during the call
        module = _check(driver.cuModuleLoadData(ctypes.addressof(image)), f"loading the PTX of {meta.name}")
        fn = _check(driver.cuModuleGetFunction(module, meta.name.encode()), f"finding {meta.name}")
        if meta.shared > 48 * 1024:  # above 48 KiB a kernel must opt in to dynamic shared memory
            attr = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
            _check(driver.cuFuncSetAttribute(fn, attr, meta.shared), f"raising {meta.name}'s shared memory")
        _modules[key] = (module, fn)
    return _modules[key][1]


def launch(launch_: Launch, plan: LaunchPlan, tensors: dict[str, torch.Tensor], arch: int, stream=None) -> None:
    """One kernel launch of the plan on `tensors` (every buffer the launch names)."""
    compiled = launch_.compile(plan.buffers, arch)
    fn = load(compiled)
    values = []  # ctypes objects, kept alive until the launch is queued
    for name in launch_.params:
        v = launch_.args[name]
        if isinstance(v, str):
            t = tensors[v]
            if not t.is_cuda or not t.is_contiguous():
                raise TrtqError(f"buffer {v!r} must be a contiguous CUDA tensor (plugins get linear tensors)")
            values.append(ctypes.c_void_p(t.data_ptr()))
        elif isinstance(v, int):
            values.append(ctypes.c_int32(v))
        else:
            values.append(ctypes.c_float(v))
    values += [ctypes.c_void_p(0), ctypes.c_void_p(0)]  # Triton's global and profile scratch pointers
    params = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
    driver = _driver()
    stream = torch.cuda.current_stream().cuda_stream if stream is None else stream
    block = compiled.metadata.num_warps * 32
    _check(driver.cuLaunchKernel(fn, *launch_.grid, block, 1, 1, compiled.metadata.shared,
                                 driver.CUstream(stream), ctypes.addressof(params), 0),
           f"launching {compiled.metadata.name}")


def run_plan(plan: LaunchPlan, inputs: dict[str, torch.Tensor], arch: int | None = None) -> torch.Tensor:
    """All launches of the plan on CUDA `inputs` (by the node's input names); returns the output tensor.
    Workspaces are allocated here (TensorRT would hand the plugin its workspace)."""
    if arch is None:
        major, minor = torch.cuda.get_device_capability()
        arch = 10 * major + minor
    tensors = _buffers(plan, inputs)
    for step in plan.launches:
        launch(step, plan, tensors, arch)
    return tensors[plan.output]


def _buffers(plan: LaunchPlan, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inputs, checked against the plan, plus freshly allocated workspaces and output (poisoned)."""
    tensors = dict(inputs)
    device = next(iter(inputs.values())).device
    for b in plan.buffers.values():
        if b.role == "input":
            t = tensors.get(b.name)
            if t is None or tuple(t.shape) != b.shape or t.dtype != getattr(torch, b.dtype):
                got = None if t is None else (tuple(t.shape), t.dtype)
                raise TrtqError(f"input {b.name!r}: the plan expects {b.shape} {b.dtype}, got {got}")
        else:
            tensors[b.name] = torch.empty(b.shape, dtype=getattr(torch, b.dtype), device=device)
    if plan.buffers[plan.output].dtype in ("float32", "float16", "bfloat16"):
        tensors[plan.output].fill_(float("nan"))  # poisoned: every element must be written
    return tensors


def interpret_plan(plan: LaunchPlan, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The plan's launches in Triton's CPU interpreter (TRITON_INTERPRET=1 before the kernels are imported), on
    CPU tensors: the same grids, arguments and workspaces as `run_plan`, so CI checks every plan's bindings
    against the op without a GPU (only the PTX and the driver launch are left to `run_plan`)."""
    tensors = _buffers(plan, inputs)
    for step in plan.launches:
        args = {p: tensors[v] if isinstance(v, str) else v for p, v in step.args.items()}
        step.fn[step.grid](**args, **step.constexprs)  # by name: constexprs sit between run-time parameters
    return tensors[plan.output]
