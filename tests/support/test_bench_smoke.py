"""The benchmark harness end to end at toy sizes (``--quick --smoke``): it must print a table and a
summary, write JSON and Markdown, draw PNG plots, and flag a contender whose output is wrong."""
from __future__ import annotations

import json

import numpy as np
import pytest

from detkernels.bench import main
from detkernels.bench.scenarios import FAMILIES, plan

pytest.importorskip("torch")


def _doc(out):
    doc = json.loads((out / "results.json").read_text())
    assert doc["schema"] == 1
    return doc


def test_smoke_writes_table_json_and_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    assert main(["--quick", "--smoke", "--device", "cpu", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| case " in text and "| contender " in text  # the 120-column screen table
    assert "Summary (which kernels to run here):" in text
    assert "NMS peak memory vs N" in text

    doc = _doc(out)
    env = doc["environment"]
    assert env["versions"]["numpy"] == np.__version__
    assert env["devices"]["cpu"]["name"] and env["threads"]["detkernels"] >= 1
    recs = doc["results"]
    families = {r["family"] for r in recs}
    expected = {f.name for f in FAMILIES.values() if f.available() is None}
    assert families == expected
    if "roi_align" not in expected:
        assert any(n.startswith("roi_align: not available") for n in doc["notes"])
    # Every case of every available family ran, each with detkernels, torchvision and the reference.
    n_cases = sum(len(plan(FAMILIES[f], "smoke")) for f in expected)
    assert len({(r["family"], r["case"]) for r in recs}) == n_cases
    for r in recs:
        if r["kind"] == "detkernels":
            assert r["status"] == "exact", r
        if r["kind"] == "torchvision":
            assert not r["status"].startswith(("DIFFERS", "ERROR")), r
        if r["timed"]:
            assert r["repeats"] == 2 and 0 < r["q1_s"] <= r["median_s"] <= r["q3_s"]
            assert r["host_peak_bytes"] is not None and r["host_peak_bytes"] >= 0
    tv = [r for r in recs if r["row"] == "torchvision" and r["timed"]]
    assert tv and all(r["speedup_vs_torchvision"] == 1.0 for r in tv)
    # Batches of images also run as one batched_nms call (exact, like the per-image loop).
    one = [r for r in recs if r["row"] == "detkernels[native] one call"]
    assert one and all(r["params"]["B"] > 1 and r["status"] == "exact" for r in one)

    md = (out / "results.md").read_text()
    assert "## Summary" in md and "| contender " in md
    pngs = sorted((out / "plots").glob("*.png"))
    assert any(p.name.startswith("nms_vs_N_") for p in pngs)
    assert any(p.name.startswith("nms_memory_vs_N_") for p in pngs)
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_wrong_backend_output_is_flagged(tmp_path, capsys, monkeypatch):
    """A detkernels contender that returns a wrong answer is reported and fails the exit status."""
    fam = FAMILIES["nms"]
    real = type(fam).detkernels_fn

    def broken(self, dk, p, backend):
        fn = real(self, dk, p, backend)
        return fn if backend == "numpy" else (lambda inp: fn(inp)[:-1])  # drop the last kept box

    monkeypatch.setattr(type(fam), "detkernels_fn", broken)
    out = tmp_path / "run"
    assert main(["--smoke", "--ops", "nms", "--no-plots", "--device", "cpu", "--out", str(out)]) == 1
    recs = [r for r in _doc(out)["results"] if r["kind"] == "detkernels"]
    assert recs and all(r["status"] == "MISMATCH vs reference" for r in recs)
    assert "PROBLEMS" in capsys.readouterr().out


def test_numpy_arrays_without_torchvision(tmp_path, capsys):
    """--numpy-only: detkernels on NumPy arrays against the reference, no torchvision column."""
    out = tmp_path / "run"
    assert main(["--smoke", "--numpy-only", "--ops", "box_iou,nms", "--no-plots", "--out", str(out)]) == 0
    doc = _doc(out)
    assert doc["meta"]["array_library"] == "numpy"
    kinds = {r["kind"] for r in doc["results"]}
    assert kinds - {"peer"} == {"detkernels", "reference"}  # peers (ONNX Runtime, OpenCV) take NumPy
    assert all(r["status"] in ("exact", "reference (spec)", "equal") for r in doc["results"])
    assert "no torchvision comparison" in capsys.readouterr().out
