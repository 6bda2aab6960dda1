"""The public functions: torchvision.ops' names, signatures, defaults, output dtypes/shapes and
error types (``boxes``: the IoU family; ``nms``: the NMS forms; ``roi``: the RoI ops;
``roi_modules``: their nn.Modules). Re-exported by ``detkernels``.

Every function takes NumPy arrays or torch tensors (CuPy / Numba device arrays where a GPU backend
serves them) and returns the same kind on the same device; each also takes a keyword-only
``backend=`` ('native', 'cupy', 'numba', 'numpy'; detkernels/_registry.py has the rule). Each
validates and normalises its arguments once (detkernels/_checks.py), then hands torch tensors to
detkernels/_torch/ (custom ops, autograd, the eager path) and other arrays to
detkernels/_dispatch.py.
"""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable


def public(fn: Callable) -> Callable:
    """Make ``fn`` a leaf under torch.fx symbolic tracing: a Proxy argument records one
    call_function node instead of tracing into the array-library code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        fx = sys.modules.get("torch.fx")
        if fx is not None:
            for a in (*args, *kwargs.values()):
                if isinstance(a, fx.Proxy):
                    return a.tracer.create_proxy("call_function", wrapper, args, kwargs)
        return fn(*args, **kwargs)

    return wrapper
