"""Array-library glue: what kind of array came in, on which device, and how to hand its buffer to a
kernel and give back an array of the same kind. torch, cupy and numba are never imported here
unless an array of theirs came in (which means the caller already imported them).

Kinds: NumPy arrays, torch tensors (CPU/CUDA), CuPy arrays, Numba CUDA device arrays (also the
CUDA simulator's), and any other object with ``__cuda_array_interface__`` (read as input; outputs
for it are Numba device arrays).
"""
from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

__all__ = [
    "kind",
    "device",
    "dtype_name",
    "is_torch",
    "same_placement",
    "to_numpy_view",
    "from_numpy",
    "empty",
    "ascontig",
    "broadcast_to",
    "astype",
    "data_ptr",
    "current_stream",
]

_TORCH_DTYPES = {
    "float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
    "bool",
}


_KIND_OF_TYPE: dict = {np.ndarray: "numpy"}  # exact types seen before (the eager hot path)


def kind(x: Any) -> str:
    """'numpy' | 'torch' | 'cupy' | 'numba' | 'cuda_array' (other __cuda_array_interface__)."""
    k = _KIND_OF_TYPE.get(type(x))
    if k is not None:
        return k
    k = _kind(x)
    if k in ("numpy", "torch"):
        _KIND_OF_TYPE[type(x)] = k
    return k


def _kind(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return "numpy"
    mod = type(x).__module__
    if mod.startswith("torch") and "torch" in sys.modules and isinstance(x, sys.modules["torch"].Tensor):
        return "torch"
    if mod.startswith("cupy"):
        return "cupy"
    if mod.startswith("numba.cuda"):
        return "numba"
    if hasattr(x, "__cuda_array_interface__"):
        return "cuda_array"
    raise TypeError(f"expected a NumPy array, torch.Tensor, CuPy array or Numba device array, got "
                    f"{type(x).__name__}")


def is_torch(x: Any) -> bool:
    return "torch" in sys.modules and isinstance(x, sys.modules["torch"].Tensor)


def device(x: Any) -> str:
    """'cpu' or 'cuda:<index>'."""
    k = kind(x)
    if k == "numpy":
        return "cpu"
    if k == "torch":
        d = x.device
        return d.type if d.index is None else f"{d.type}:{d.index}"
    if k == "cupy":
        return f"cuda:{x.device.id}"
    # Numba arrays live on the current Numba context's device (the simulator has one device).
    if k == "numba":
        cuda = sys.modules["numba"].cuda
        return f"cuda:{cuda.get_current_device().id}" if hasattr(cuda, "get_current_device") else "cuda:0"
    return "cuda:0"


def dtype_name(x: Any) -> str:
    if kind(x) == "torch":
        return str(x.dtype).removeprefix("torch.")
    return np.dtype(x.dtype).name


def same_placement(**arrays: Any) -> str:
    """Check that all arrays are of one kind and on one device; return that device."""
    items = [(n, a) for n, a in arrays.items() if a is not None]
    n0, a0 = items[0]
    k0, d0 = kind(a0), device(a0)
    for n, a in items[1:]:
        k, d = kind(a), device(a)
        if k != k0:
            raise TypeError(f"{n0} is a {k0} array but {n} is a {k} array; pass one array type")
        if d != d0:
            raise ValueError(f"{n0} is on {d0} but {n} is on {d}; move them to one device")
    return d0


def to_numpy_view(x: Any) -> np.ndarray:
    """A NumPy view of a CPU array (zero-copy for torch CPU tensors; bfloat16 is widened)."""
    if isinstance(x, np.ndarray):
        return x
    if kind(x) == "torch":
        if x.device.type != "cpu":
            raise ValueError(f"expected a CPU tensor, got one on {x.device}")
        t = x.detach()
        if t.dtype == sys.modules["torch"].bfloat16:
            t = t.float()
        return t.resolve_conj().resolve_neg().numpy()
    raise TypeError(f"cannot view a {kind(x)} array as NumPy")


def from_numpy(a: np.ndarray, like: Any) -> Any:
    """Return ``a`` as an array of ``like``'s kind and device."""
    if isinstance(like, np.ndarray):
        return a
    if kind(like) == "torch":
        torch = sys.modules["torch"]
        t = torch.from_numpy(np.ascontiguousarray(a))
        return t if like.device.type == "cpu" else t.to(like.device)
    if kind(like) == "cupy":
        import cupy

        with cupy.cuda.Device(like.device.id):
            return cupy.asarray(a)
    return _numba_cuda().to_device(np.ascontiguousarray(a))


def _numba_cuda():
    import numba.cuda

    return numba.cuda


_NP_BACKED = ("float32", "float64", "int32", "int64", "uint8")
_HUGE_BYTES = 4 << 20


def empty(shape: tuple, dtype: str, like: Any) -> Any:
    """An uninitialised array of ``like``'s kind and device."""
    k = kind(like)
    if k == "numpy":
        return np.empty(shape, dtype=dtype)
    if k == "torch":
        torch = sys.modules["torch"]
        if like.device.type == "cpu" and dtype in _NP_BACKED and \
                math.prod(shape) * np.dtype(dtype).itemsize >= _HUGE_BYTES:  # math: ~10x np.prod's speed
            # NumPy advises the kernel to back large buffers with huge pages; torch's CPU
            # allocator does not (unless THP_MEM_ALLOC_ENABLE=1), and first-touch page faults
            # then cost as much as a large roi_align forward itself (~15 ms per 50 MB here).
            return torch.from_numpy(np.empty(shape, dtype=dtype))
        return torch.empty(shape, dtype=getattr(torch, dtype), device=like.device)
    if k == "cupy":
        import cupy

        with cupy.cuda.Device(like.device.id):
            return cupy.empty(shape, dtype=dtype)
    return _numba_cuda().device_array(shape, dtype=dtype)


def broadcast_to(x: Any, shape: tuple) -> Any:
    if kind(x) == "torch":
        return x.expand(shape)
    if kind(x) == "numpy":
        return np.broadcast_to(x, shape)
    if kind(x) == "cupy":
        import cupy

        return cupy.broadcast_to(x, shape)
    if tuple(x.shape) == tuple(shape):
        return x
    # Numba device arrays cannot broadcast: through the host (a copy, as any broadcast copy is).
    return from_numpy(np.broadcast_to(_host(x), shape), like=x)


def _host(x: Any) -> np.ndarray:
    """A NumPy copy of a Numba (or other __cuda_array_interface__) device array."""
    cuda = _numba_cuda()
    return (x if kind(x) == "numba" else cuda.as_cuda_array(x)).copy_to_host()


def ascontig(x: Any) -> Any:
    k = kind(x)
    if k == "numpy":
        return np.ascontiguousarray(x)
    if k == "torch":
        return x.contiguous()
    if k == "cupy":
        import cupy

        return cupy.ascontiguousarray(x)
    if k == "numba" and (x.size == 0 or x.is_c_contiguous()):
        return x
    # Numba has no device-side copy of a strided array: via the host.
    return from_numpy(np.ascontiguousarray(_host(x)), like=x)


def astype(x: Any, dtype: str) -> Any:
    """``x`` converted to ``dtype`` (no copy if it already is)."""
    if dtype_name(x) == dtype:
        return x
    if kind(x) == "torch":
        torch = sys.modules["torch"]
        return x.to(getattr(torch, dtype))
    if kind(x) in ("numba", "cuda_array"):  # no device-side cast in Numba: via the host
        return from_numpy(_host(x).astype(dtype), like=x)
    return x.astype(dtype)


def data_ptr(x: Any) -> int:
    k = kind(x)
    if k == "numpy":
        return x.ctypes.data
    if k == "torch":
        return x.data_ptr()
    if k == "cupy":
        return x.data.ptr
    return x.__cuda_array_interface__["data"][0]


def current_stream(x: Any) -> int:
    """The caller's current CUDA stream handle for ``x``'s device (0 = legacy default stream)."""
    k = kind(x)
    if k == "torch":
        return sys.modules["torch"].cuda.current_stream(x.device).cuda_stream
    if k == "cupy":
        import cupy

        with cupy.cuda.Device(x.device.id):
            return cupy.cuda.get_current_stream().ptr
    s = getattr(x, "stream", 0)  # a Numba array's own stream (0: the default stream)
    if not s:
        return 0
    h = s.handle
    return int(getattr(h, "value", h) or 0)
