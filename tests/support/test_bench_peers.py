"""The nms / batched_nms peers (ONNX Runtime, OpenCV) and the competing-load mode of the harness
(issue 21), at toy sizes: the peers' kept indices are checked against the reference (and a wrong
peer is flagged), ``--load 1`` times every contender again with a busy process and reports its
slowdown, and the busy process is gone afterwards."""
from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("torch")

from detkernels.bench import load as L
from detkernels.bench import main
from detkernels.bench.runner import run
from detkernels.bench.scenarios import FAMILIES

PEERS = [p for p, mod in (("onnxruntime", "onnxruntime"), ("opencv", "cv2"))
         if __import__("importlib").util.find_spec(mod) is not None]


@pytest.mark.skipif(not PEERS, reason="neither onnxruntime nor opencv is installed")
def test_peers_checked_and_slowdown_reported(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["--smoke", "--device", "cpu", "--ops", "nms,batched_nms", "--no-plots",
                 "--load", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "peer median / detkernels[native] median" in text and "Slowdown with 1 competing" in text
    md = (out / "results.md").read_text()
    assert "| onnxruntime / ours (load) |" in md or "onnxruntime" not in PEERS
    import json

    recs = json.loads((out / "results.json").read_text())["results"]
    for fam in ("nms", "batched_nms"):
        rows = {r["row"]: r for r in recs if r["family"] == fam}
        for peer in PEERS:
            got = [r for r in recs if r["family"] == fam and r["row"] == peer]
            assert got and all(r["status"] in ("equal", "same set (tie order)") for r in got), got
        assert rows["detkernels[native]"]["slowdown"] > 0


def test_wrong_peer_is_flagged():
    fam = FAMILIES["batched_nms"]
    p = {**fam.defaults, **fam.mode_defaults["smoke"]}
    inp = fam.inputs(p, "cpu", "torch", 0)
    expected = fam.expected(p, inp, "cpu")
    row = [r for r in fam.contenders(p, "cpu", "torch") if r.label == "detkernels[native]"][0]
    row.kind, row.canon = "peer", lambda out, inp: np.asarray(out)[:-1]  # drops one kept box
    assert fam.check_peer(row, row.fn(inp), inp, expected, p).startswith("differs (1 of")


def test_busy_load_starts_stops_and_ends():
    with L.BusyLoad(1) as busy:
        pid = busy.procs[0].pid
        busy.on()
        busy.off()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_run_without_load_has_no_slowdown():
    recs, _ = run([FAMILIES["nms"]], "smoke", ["cpu"], "torch")
    assert recs and all("slowdown" not in r for r in recs)
