"""The CPU emulation of the CUDA multi-image NMS, as the GPU-logic tests call it (shared by the
bitmask and the sparse-path tests)."""
from __future__ import annotations

import numpy as np

from detkernels.backends import native

from _helpers import assert_bytes_equal


def emulate(boxes, scores, classes, thr, K, sthr=None, **kw):
    """native.multi_image_nms_emulated on contiguous copies (classes as int64)."""
    b = np.ascontiguousarray(boxes)
    s = np.ascontiguousarray(scores)
    c = None if classes is None else np.ascontiguousarray(classes, dtype=np.int64)
    return native.multi_image_nms_emulated(b, s, c, thr, K, sthr, **kw)


def check(got, want, what):
    """(indices, classes, counts) byte-equal to the reference's; None where the reference has none."""
    for g, w, name in zip(got, want, ("indices", "classes", "counts")):
        if w is None:
            assert g is None, f"{what}: unexpected {name}"
        else:
            assert_bytes_equal(g, w, f"{what} {name}")
