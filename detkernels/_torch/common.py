"""Shared by the torch submodules: when to take the custom op instead of the eager path."""
from __future__ import annotations

import torch
from torch import Tensor


def traced(*tensors: Tensor | None) -> bool:
    """True where the custom op must be used: compiling/exporting, jit tracing, fake/meta tensors."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return True
    for t in tensors:
        # FakeTensor, FunctionalTensor and other subclasses have no usable storage.
        if t is not None and (t.device.type not in ("cpu", "cuda")
                              or type(t) is not Tensor and not isinstance(t, torch.nn.Parameter)):
            return True
    return False
