"""The diffusers integration: run a pipeline with its denoiser swapped for an accelerated one.

    accelerate(pipe, source, backend="auto")   pipe.unet / pipe.transformer / pipe.denoiser -> AcceleratedDenoiser
    restore(pipe)                              the float denoiser back
    available_backends()                       each backend -> None, or why this machine cannot run it

Backends and what each does on a machine without what it needs: docs/runtime.md.
"""

from trtq.runtime.accelerate import accelerate, denoiser_attr, restore
from trtq.runtime.backends import BACKENDS, available_backends
from trtq.runtime.denoiser import AcceleratedDenoiser

__all__ = ["BACKENDS", "AcceleratedDenoiser", "accelerate", "available_backends", "denoiser_attr", "restore"]
