"""The README as a newcomer meets it: its "Use" snippet runs as pasted, and its test command is
the one CI runs."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _block(after: str, lang: str) -> str:
    start = README.index(after)
    m = re.compile(rf"```{lang}\n(.*?)```", re.S).search(README, start)
    assert m, f"no {lang} block after {after!r}"
    return m.group(1)


@pytest.mark.slow
def test_use_snippet_runs_as_pasted():
    pytest.importorskip("torchvision")
    code = _block("## Use", "python")
    code += ("\nassert keep.dtype == torch.int64 and type(keep_np).__module__ == 'numpy'"
             "\nassert out.shape == (100, 256, 7, 7) and idx.shape == (4, 300)"
             "\nassert torchvision.ops.nms is not detkernels.nms  # the block restored it\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ci_runs_the_readme_test_command():
    cmd = _block("Tests — install everything", "bash").strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert cmd in ci.splitlines(), "README's test command and .ci/run differ"
    assert cmd.startswith("python3 -m venv .venv && . .venv/bin/activate && ")  # self-contained
    main = _block("Main job", "bash").strip()
    assert main.startswith("python3 -m venv .venv && . .venv/bin/activate && ")
