"""The competing-load mode (``--load K``): every case is timed twice, quiet and with K busy
processes on the CPU, and each contender's slowdown factor (loaded median / quiet median) is
reported next to its quiet and loaded ratios to the peers.

The busy processes are plain Python spin loops (``while True: pass``) at the harness's own nice
level, started once by the harness, stopped (SIGSTOP) while the quiet timings run, continued
(SIGCONT) for the loaded ones, and killed at the end (also on an error or Ctrl-C). On a machine
with as many cores as threads the kernels use, one busy process takes one core away: a kernel
that splits its work over all cores then waits for the piece the preempted thread holds, while a
single-threaded kernel loses at most its share of one core.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

__all__ = ["SLOWDOWN_NOTE", "BusyLoad", "ratio_table", "slowdown_table"]

SLOWDOWN_NOTE = ("slowdown = median with the competing busy processes / quiet median, per "
                 "contender, timed in the same case on the same inputs (1.00 = unaffected)")


class BusyLoad:
    """K spinning processes: ``on()`` / ``off()`` continue / stop them, ``close()`` ends them."""

    def __init__(self, k: int) -> None:
        self.procs: list[subprocess.Popen] = []
        for _ in range(k):
            self.procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                               stdin=subprocess.DEVNULL))
        time.sleep(0.2)  # past interpreter start-up
        self.off()

    def _signal(self, sig: int) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, sig)

    def on(self) -> None:
        self._signal(signal.SIGCONT)
        time.sleep(0.02)  # let the scheduler give them their share before timing starts

    def off(self) -> None:
        self._signal(signal.SIGSTOP)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()  # SIGKILL works on a stopped process too
                p.wait()
        self.procs = []

    def __enter__(self) -> BusyLoad:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def slowdown_table(records: list[dict]) -> str:
    """Markdown: case, contender, quiet median, loaded median, slowdown (records with both)."""
    from .report import fmt_time

    lines = ["| op | case | contender | quiet | loaded | slowdown |",
             "|----|------|-----------|-------|--------|----------|"]
    for r in records:
        if r.get("loaded_median_s") is None or not r.get("timed"):
            continue
        lines.append(f"| {r['family']} | {r['case']} | {r['row']} | {fmt_time(r['median_s'])} | "
                     f"{fmt_time(r['loaded_median_s'])} | {_fmt(r['slowdown'])} |")
    return "\n".join(lines) if len(lines) > 2 else ""


PEERS = ("onnxruntime", "opencv", "detkernels[numba]", "torchvision")


def ratio_table(records: list[dict], ours: str = "detkernels[native]") -> str:
    """Markdown: per nms/batched_nms case, ``peer median / ours`` for each peer (> 1: ours is
    faster), quiet and (when timed) under load."""
    by_case: dict[tuple, dict[str, dict]] = {}
    for r in records:
        if r["family"] in ("nms", "batched_nms") and r.get("timed"):
            by_case.setdefault((r["device"], r["family"], r["case"]), {})[r["row"]] = r
    loaded = any(r.get("loaded_median_s") is not None for r in records)
    head = [f"{p} / ours" for p in PEERS]
    if loaded:
        head += [f"{p} / ours (load)" for p in PEERS]
    lines = ["| op | case | " + " | ".join(head) + " |", "|" + "---|" * (2 + len(head))]
    for (_, fam, case), rows in by_case.items():
        me = rows.get(ours)
        if me is None:
            continue
        cells = [_fmt(rows[p]["median_s"] / me["median_s"]) if p in rows else "-" for p in PEERS]
        if loaded:
            cells += [_fmt(rows[p]["loaded_median_s"] / me["loaded_median_s"])
                      if p in rows and rows[p].get("loaded_median_s") and me.get("loaded_median_s")
                      else "-" for p in PEERS]
        lines.append(f"| {fam} | {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""
