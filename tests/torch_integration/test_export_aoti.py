"""AOTInductor on the CPU: torchvision's Faster R-CNN (ResNet50-FPN), Mask R-CNN and RetinaNet
(a tiny backbone: the CI budget) at 128 px, a batch of two, exported through ``export_ready`` and
compiled by ``detkernels.aoti_compile_exact`` give eager's bytes. Plain
``aoti_compile_and_package`` does not: Inductor's own ``exp``, ``softmax`` and ``sigmoid`` kernels
round differently from ATen's, pinned op by op here, and so does its bilinear ``interpolate`` (export_ready makes the resize an opaque op;
pinned here too). The tiny model of tests/torch_integration/test_examples.py shows the
whole-model effect."""
from __future__ import annotations

import pytest
from _helpers import assert_bytes_equal

torch = pytest.importorskip("torch")
tv = pytest.importorskip("torchvision")

from test_export import assert_same, ex

import detkernels
from detkernels._torch import export as dk_export

pytestmark = pytest.mark.torchvision


@pytest.fixture(autouse=True)
def _unpatch():
    yield
    dk_export._restore_patch()


# AOTInductor compiles a ResNet50-FPN model in 90-150 s on 2 cores (docs/DEPLOY.md): the CI budget
# holds one. Mask R-CNN and RetinaNet are compiled with a tiny backbone (their heads and
# post-processing are torchvision's, unchanged); the full ones are measured by
# examples/export_aoti.py.
AOTI_MODELS = ("fasterrcnn_resnet50_fpn", "tiny_maskrcnn", "tiny_retinanet")


@pytest.mark.slow
@pytest.mark.parametrize("name", AOTI_MODELS)
def test_aoti_package_is_bit_equal_to_eager(name, tmp_path):
    model, imgs = detkernels.export_ready(ex.build(name)), ex.images(128)
    with torch.no_grad():
        eager = model(imgs)
        program = torch.export.export(model, (imgs,))
        path = detkernels.aoti_compile_exact(program, str(tmp_path / f"{name}.pt2"))
        runner = torch._inductor.aoti_load_package(path)
        assert_same(runner(imgs), eager)
        other = ex.images(128, seed=5)  # other pixels (the sizes are the exported ones)
        assert_same(runner(other), model(other))
    assert all(len(d["boxes"]) > 10 for d in eager)


_OPS = {  # each ATEN_NUMERICS_OPS entry, on inputs where Inductor's kernel rounds otherwise
    "exp": lambda x: torch.exp(x),
    "_softmax": lambda x: torch.softmax(x, -1),
    # RetinaNet's head: the class logits permuted to [N, HWA, C] (contiguous inputs happen to agree)
    "sigmoid": lambda x: torch.sigmoid(x.permute(0, 2, 3, 1).reshape(2, -1, 4)).flatten(),
}


@pytest.mark.parametrize("op", dk_export.ATEN_NUMERICS_OPS)
def test_inductor_rounds_these_ops_otherwise_and_aten_numerics_restores_eager(op):
    x = torch.randn(2, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    want = _OPS[op](x)
    torch._dynamo.reset()
    fast = torch.compile(_OPS[op], backend="inductor", fullgraph=True)(x)
    assert fast.shape == want.shape
    assert not torch.equal(fast.view(torch.int32), want.view(torch.int32)), f"Inductor's {op} matches ATen now"
    torch.testing.assert_close(fast, want)  # a few ulps
    torch._dynamo.reset()
    with dk_export.aten_numerics():
        exact = torch.compile(_OPS[op], backend="inductor", fullgraph=True)(x)
    assert_bytes_equal(exact, want, op)
    torch._dynamo.reset()


def test_resize_is_aten_bilinear_where_inductors_rounds_otherwise():
    """The transform's resize at a scale that is not 1 (128 -> 96 px): exported and AOT-compiled
    through detkernels::resize_bilinear it is eager's; Inductor's own bilinear is not."""
    model = detkernels.export_ready(ex.build("tiny_fasterrcnn", size=96))
    img = ex.images(128)[0]

    class Resize(torch.nn.Module):
        def __init__(self, transform, fn):
            super().__init__()
            self.transform, self.fn = transform, fn

        def forward(self, x):
            return self.fn(self.transform, x)[0]

    want = model.transform.resize(img)[0]
    assert want.shape == (3, 96, 96)
    ours = torch.export.export(Resize(model.transform, type(model.transform).resize), (img,))
    tvs = torch.export.export(Resize(model.transform, type(model.transform).__mro__[1].resize), (img,))
    assert_bytes_equal(ours.module()(img), want, "exported")
    assert_bytes_equal(torch._inductor.aoti_load_package(torch._inductor.aoti_compile_and_package(ours))(img),
                       want, "AOTInductor")
    theirs = torch._inductor.aoti_load_package(torch._inductor.aoti_compile_and_package(tvs))(img)
    assert not torch.equal(theirs.view(torch.int32), want.view(torch.int32))
    torch.testing.assert_close(theirs, want)


def test_aten_numerics_restores_inductors_tables():
    from torch._inductor import decomposition, lowering

    before = dict(lowering.lowerings), dict(decomposition.decompositions), set(lowering.fallbacks)
    with dk_export.aten_numerics():
        assert lowering.lowerings[torch.ops.aten.exp.default] is not before[0][torch.ops.aten.exp.default]
        assert torch.ops.aten._softmax.default not in decomposition.decompositions
    assert lowering.lowerings == before[0] and decomposition.decompositions == before[1]
    assert set(lowering.fallbacks) == before[2]


def test_aoti_compile_exact_needs_an_exported_program():
    with pytest.raises(TypeError, match="program must be a torch.export.ExportedProgram"):
        detkernels.aoti_compile_exact(torch.nn.Linear(2, 2))
