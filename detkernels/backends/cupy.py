"""CuPy backend (NVRTC-compiled copies of csrc/). Not implemented yet: see the issue on the Numba and
CuPy backends."""
from .._registry import declare

declare("cupy", False, "not implemented yet")
