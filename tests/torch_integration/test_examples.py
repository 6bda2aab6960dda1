"""The deployment examples run as documented, on tiny models: examples/export_onnx.py (both
exporters, ONNX Runtime gives the eager bytes) and examples/export_aoti.py (torch.export ->
AOTInductor package -> load -> run, bit-equal to eager)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
tv = pytest.importorskip("torchvision")

from test_export import load_example

from detkernels._torch import export as dk_export

pytestmark = pytest.mark.torchvision


@pytest.fixture(autouse=True)
def _unpatch():
    yield
    dk_export._restore_patch()


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_onnx_example(exporter, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    ex = load_example("export_onnx")
    out = ex.main(["--exporter", exporter, "--out", str(tmp_path / "tail.onnx")])
    assert out["onnxruntime_equal"] is True
    assert {"NonMaxSuppression", "RoiAlign"} <= set(out["onnx_ops"])
    assert all(0 < k <= 16 for k in out["kept_per_image"])


@pytest.mark.slow
def test_aoti_example(tmp_path):
    ex = load_example("export_aoti")
    out = ex.main(["--model", "tiny_fasterrcnn", "--package", str(tmp_path / "tiny.pt2")])
    assert out["exact"] is True and out["exported_equal"] is True and out["aoti_equal"] is True
    assert out["aoti_max_abs_diff"] == 0.0 and all(n > 10 for n in out["detections"])
    assert (tmp_path / "tiny.pt2").is_file()


def test_aoti_example_rejects_an_unknown_model():
    ex = load_example("export_aoti")
    with pytest.raises(SystemExit):
        ex.main(["--model", "yolo"])
    with pytest.raises(ValueError, match="--model must be one of"):
        ex.build("yolo")
