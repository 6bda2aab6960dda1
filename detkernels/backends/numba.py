"""Numba backend (CPU @njit and numba.cuda kernels). Not implemented yet: see the issue on the
Numba and CuPy backends."""
from .._registry import declare

declare("numba", False, "not implemented yet")
