"""What the harness prints: the header (CPU model, threads, load), the case-name explanations, an
on-screen table of at most 120 columns (--wide: every column), and the --help text."""
from __future__ import annotations

import json

import pytest

from detkernels.bench import main
from detkernels.bench.report import SCREEN_WIDTH, screen_table

pytest.importorskip("torch")


def _run(tmp_path, capsys, *extra):
    out = tmp_path / "run"
    assert main(["--smoke", "--device", "cpu", "--no-plots", "--out", str(out), *extra]) == 0
    cap = capsys.readouterr()
    return out, cap.out, cap.err


def test_header_shows_cpu_model_threads_and_load(tmp_path, capsys):
    out, _, err = _run(tmp_path, capsys, "--ops", "nms")
    env = json.loads((out / "results.json").read_text())["environment"]
    head = err.splitlines()[:4]
    assert head[0].startswith("detkernels bench (smoke) on cpu")
    assert head[1] == env["detkernels_build"]["summary"]  # what was built, and why
    assert head[2].startswith("CPU: ") and env["cpu"] in head[2]
    assert f"{env['usable_cpus']} usable of {env['logical_cpus']} logical CPUs" in head[2]
    t = env["threads"]
    assert head[3].startswith(f"threads: detkernels {t['detkernels']}, torch {t['torch']}")
    assert "load average" in head[3]
    assert all(len(line) <= SCREEN_WIDTH for line in head[1:])  # head[0] names the output folder


def test_screen_table_fits_120_columns_and_explains_detect_cases(tmp_path, capsys):
    out, text, err = _run(tmp_path, capsys, "--ops", "detect,nms")
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert rows and "| case " in text and "| contender " in text and "| x tv " in text
    assert all(len(line) <= SCREEN_WIDTH for line in rows), max(rows, key=len)
    assert "IQR" not in rows[0]  # dropped on screen, kept in results.md
    # The detect terms are explained before the first detect case on screen, and in results.md.
    lines = err.splitlines()
    first = next(i for i, line in enumerate(lines) if "] detect A=" in line)
    assert any(line.startswith("detect cases: A = head candidates") for line in lines[:first])
    flat = " ".join(err.split())  # the explanation is wrapped to the screen width
    assert "B = images per batch" in flat and "k = top-k candidates kept per image" in flat
    md = (out / "results.md").read_text()
    assert "- detect cases: A = head candidates (anchors) per image" in md
    assert "| op " in md and "| IQR " in md and "| peak host " in md  # the wide table is unchanged


def test_wide_prints_every_column(tmp_path, capsys):
    _, text, _ = _run(tmp_path, capsys, "--ops", "nms", "--wide")
    assert "| op " in text and "| IQR " in text and "| x torchvision " in text


def test_screen_table_clips_long_text_to_the_width():
    rec = {"family": "detect", "device": "cpu", "case": "A=100800 B=32 k=2000 float16 uniform",
           "row": "detkernels[native] multi_image_nms", "kind": "detkernels", "timed": False,
           "median_s": None, "note": "one fixed-size call, padded to k",
           "status": "ERROR: RuntimeError: " + "a very long message " * 10}
    lines = screen_table([rec]).splitlines()
    assert all(len(line) <= SCREEN_WIDTH for line in lines), max(lines, key=len)
    assert any(line.startswith("| A=100800 B=32") and ".." in line for line in lines)


def test_help_agrees_on_how_long_quick_takes(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert text.count("well under a minute on a 2-core CPU") == 2
    assert "minutes" not in text and "about a minute" not in text
    assert "--wide" in text
