"""Runs the scenario table: per device, per case, check every contender once, time them
alternating, then probe their peak memory. Produces plain records (JSON-able dicts)."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, TextIO

from .report import fmt_time, wrap
from .scenarios import Case, Family, Row, plan
from .timing import Clock, alternate, device_peak_bytes, host_peak_bytes, stats

__all__ = ["Settings", "SETTINGS", "run"]


@dataclass(frozen=True)
class Settings:
    warmup: int
    budget_s: float  # all contenders of one case together, per case
    min_repeats: int
    max_repeats: int
    input_sets: int  # rotated across repeats (fewer when one set is large)
    large_input_bytes: int = 64 << 20  # above this, one input set only


SETTINGS = {
    "smoke": Settings(warmup=1, budget_s=0.0, min_repeats=2, max_repeats=2, input_sets=1),
    "quick": Settings(warmup=2, budget_s=0.8, min_repeats=3, max_repeats=30, input_sets=3),
    "full": Settings(warmup=3, budget_s=3.0, min_repeats=5, max_repeats=200, input_sets=3),
}


def _synced(fn: Callable[[Any], Any], clock: Clock) -> Callable[[Any], Any]:
    def run(arg: Any) -> Any:
        out = fn(arg)
        clock.sync()
        return out

    return run


def _run_case(case: Case, device: str, lib: str, seed: int, s: Settings, log: TextIO,
              load: Any = None) -> list[dict]:
    fam, p = case.family, case.params
    clock = Clock(device)
    n_sets = 1 if fam.input_bytes(p) > s.large_input_bytes else s.input_sets
    inputs = [fam.inputs(p, device, lib, seed + i) for i in range(n_sets)]
    rows: list[Row] = fam.contenders(p, device, lib)
    try:
        expected = fam.expected(p, inputs[0], device)
        ref_error = None
    except Exception as e:  # a reference failure must not hide the timings; it shows per row
        expected, ref_error = None, f"reference failed: {type(e).__name__}: {e}"

    status: dict[str, str] = {}
    for row in rows:
        if row.kind == "reference" and not row.timed:  # `expected` already ran the reference
            status[row.label] = "reference (spec)" if ref_error is None else ref_error
            continue
        try:
            out = _synced(row.fn, clock)(inputs[0])
        except Exception as e:
            status[row.label] = f"ERROR: {type(e).__name__}: {e}"
            continue
        if row.kind == "baseline":
            status[row.label] = "baseline (not an NMS result)"
        elif row.kind == "reference":
            status[row.label] = "reference (spec)" if ref_error is None else ref_error
        elif ref_error is not None:
            status[row.label] = "unchecked: " + ref_error
        elif row.kind == "peer":
            status[row.label] = fam.check_peer(row, out, inputs[0], expected, p)
        else:
            status[row.label] = fam.check(row, out, expected, p, device)

    timed = {r.label: r.fn for r in rows if r.timed and not status[r.label].startswith("ERROR")}
    tty = hasattr(log, "isatty") and log.isatty()
    tick = (lambda i, n: print(f"\r    repeat {i}/{n}", end="", file=log, flush=True)) if tty else None
    samples = alternate(timed, inputs, clock, warmup=s.warmup, budget_s=s.budget_s,
                        min_repeats=s.min_repeats, max_repeats=s.max_repeats, on_repeat=tick) if timed else {}
    loaded: dict[str, list[float]] = {}
    if load is not None and timed:  # --load: the same timing again with the busy processes running
        load.on()
        try:
            loaded = alternate(timed, inputs, clock, warmup=s.warmup, budget_s=s.budget_s,
                               min_repeats=s.min_repeats, max_repeats=s.max_repeats, on_repeat=tick)
        finally:
            load.off()
    if tty:
        print("\r", end="", file=log)
    records = []
    for row in rows:
        rec: dict[str, Any] = {
            "family": fam.name, "title": fam.title, "device": device, "case": fam.describe(p),
            "params": dict(p), "sweeps": list(case.sweeps), "row": row.label, "kind": row.kind,
            "note": row.note, "status": status[row.label], "timed": row.label in samples,
            "unit": fam.unit, "work": fam.work(p), "input_bytes": fam.input_bytes(p),
        }
        if row.label in samples:
            st = stats(samples[row.label])
            rec.update(samples_s=samples[row.label], median_s=st.median, q1_s=st.q1, q3_s=st.q3,
                       min_s=st.min, max_s=st.max, repeats=st.n,
                       throughput_per_s=fam.work(p) / st.median if st.median > 0 else None)
            if row.label in loaded:
                lm = stats(loaded[row.label]).median
                rec.update(loaded_samples_s=loaded[row.label], loaded_median_s=lm,
                           slowdown=lm / st.median if st.median > 0 else None)
            fn = _synced(row.fn, clock)
            rec["host_peak_bytes"] = host_peak_bytes(fn, inputs[0])
            rec["device_peak_bytes"] = device_peak_bytes(fn, inputs[0], device)
        records.append(rec)
    # Ratios are to torchvision's own way of doing the case (the row labelled plain "torchvision").
    tv = next((r for r in records if r["row"] == "torchvision" and r["timed"]), None)
    for r in records:
        r["speedup_vs_torchvision"] = (tv["median_s"] / r["median_s"]
                                       if tv is not None and r["timed"] and r["median_s"] > 0
                                       and r["kind"] != "baseline" else None)
    return records


def run(families: list[Family], mode: str, devices: list[str], lib: str, seed: int = 0,
        log: TextIO | None = None, load: int = 0) -> tuple[list[dict], list[str]]:
    """Every case of every family on every device; returns (records, notes). Progress goes to
    ``log`` (default: sys.stderr at call time). ``load`` > 0: every case is timed again with that
    many competing busy processes (detkernels/bench/load.py)."""
    if load > 0:
        from .load import BusyLoad

        with BusyLoad(load) as busy:
            return _run(families, mode, devices, lib, seed, log, busy)
    return _run(families, mode, devices, lib, seed, log, None)


def _run(families: list[Family], mode: str, devices: list[str], lib: str, seed: int,
         log: TextIO | None, busy: Any) -> tuple[list[dict], list[str]]:
    log = sys.stderr if log is None else log
    s = SETTINGS[mode]
    notes: list[str] = []
    if any(f.name in ("nms", "batched_nms") for f in families):
        from .peers import peer_notes

        notes.extend(peer_notes())
    work: list[tuple[str, Case]] = []
    for fam in families:
        why = fam.available()
        if why is not None:
            notes.append(f"{fam.name}: {why}")
            print(f"skipping {fam.name}: {why}", file=log, flush=True)
            continue
        for dev in devices:
            work.extend((dev, c) for c in plan(fam, mode))
    records: list[dict] = []
    t_start = time.perf_counter()
    explained: set[str] = set()
    for i, (dev, case) in enumerate(work, 1):
        if case.family.case_terms and case.family.name not in explained:
            explained.add(case.family.name)
            for line in wrap(f"{case.family.name} cases: {case.family.case_terms}", indent="    "):
                print(line, file=log, flush=True)
        head = f"[{i}/{len(work)}] {case.family.name} {case.describe()} on {dev}"
        print(head + " ...", file=log, flush=True)
        try:
            recs = _run_case(case, dev, lib, seed, s, log, busy)
        except Exception as e:  # e.g. out of memory for one size: report it, keep going
            msg = f"{case.family.name} {case.describe()} on {dev} failed: {type(e).__name__}: {e}"
            notes.append(msg)
            print("    " + msg, file=log, flush=True)
            if dev.startswith("cuda"):
                import torch

                torch.cuda.empty_cache()
            continue
        records.extend(recs)
        parts = [f"{r['row']} {fmt_time(r['median_s'])}" if r["timed"]
                 else f"{r['row']} [{r['status']}; not timed]"
                 for r in recs]
        bad = [f"{r['row']}: {r['status']}" for r in recs
               if r["status"].startswith(("MISMATCH", "ERROR", "DIFFERS"))]
        print(f"    {'; '.join(parts)}  [{time.perf_counter() - t_start:.0f} s]"
              + (f"  !! {'; '.join(bad)}" if bad else ""), file=log, flush=True)
    return records, notes
