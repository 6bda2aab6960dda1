"""torch integration, beside the public API: ``torch.ops.detkernels.*`` custom ops
(``torch.library.custom_op``, fake kernels for torch.compile / torch.export, registered autograd),
the eager paths the public functions take for torch tensors, TorchScript builtins and
``patch_torchvision``. Imported on first use with a torch tensor (or when torch is imported);
never by a NumPy-only user.

Layers (imports run downward only): ``script`` and ``patch`` (they need the public functions and
are imported by ``detkernels/__init__.py``) -> detkernels/api/ -> ``iou``, ``nms``, ``roi`` (custom
ops and eager entries) -> ``common`` -> detkernels/_checks.py, detkernels/_dispatch.py.

This package's ``__init__`` imports nothing, so importing a low submodule never pulls in the
high ones.
"""
