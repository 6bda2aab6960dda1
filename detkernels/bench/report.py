"""The text table, the recommendation summary, and the JSON file."""
from __future__ import annotations

import json
import math
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

from .timing import HOST_PEAK_METHOD

__all__ = ["fmt_time", "fmt_bytes", "table", "screen_table", "screen_header", "case_terms", "wrap",
           "summary", "workspace_table", "write_json", "write_markdown"]

SCHEMA = 1
LEGEND = ("median, IQR (interquartile range) and minimum of the time per call (on a busy host the "
          "minimum is the steadiest estimate of the work itself); 'x torchvision' = torchvision's "
          "median / this contender's median (> 1: faster than torchvision); peak host/device = extra "
          "memory one call touched (see the methods in results.json); check = output vs the NumPy "
          "reference (exact: byte-identical; equal: same values; same set: same detections, tied "
          "scores in another order; differs: a divergence SPEC.md documents).")
SCREEN_WIDTH = 120  # columns of the on-screen table (results.md keeps the wide one)
SCREEN_LEGEND = ("median = median time per call; 'x tv' = torchvision's median / this contender's "
                 "median (> 1: faster than torchvision); check = output vs the NumPy reference "
                 "(exact: byte-identical; equal: same values; same set: same detections, tied scores "
                 "in another order; differs: a divergence SPEC.md documents); [n] = a note below the "
                 "table. IQR, minimum and peak memory: results.md, or --wide.")


def _num(v: float) -> str:
    """Three significant digits, never in exponent notation (999.7 -> '1000')."""
    return f"{v:.3g}" if v < 999.5 else f"{v:.0f}"


def fmt_time(t: float | None) -> str:
    if t is None:
        return "-"
    if t < 1e-3:
        return f"{t * 1e6:.1f} us"
    if t < 1:
        return f"{_num(t * 1e3)} ms"
    return f"{_num(t)} s"


def fmt_bytes(b: int | None) -> str:
    if b is None:
        return "-"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= scale:
            return f"{_num(b / scale)} {unit}"
    return f"{b} B"


def _grid(header: list[str], body: list[list[str]]) -> str:
    """A Markdown table, columns padded so it also reads as plain text."""
    w = [max(len(str(c)) for c in col) for col in zip(header, *body)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(n) for c, n in zip(cells, w)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (n + 2) for n in w) + "|", *map(line, body)])


def table(records: list[dict]) -> str:
    """One line per (case, contender): median, IQR, speedup over torchvision, peak memory, check."""
    header = ["op", "case", "device", "contender", "median", "IQR", "min", "x torchvision",
              "peak host", "peak device", "check"]
    body = []
    for r in records:
        timed = r["timed"]
        sp = r.get("speedup_vs_torchvision")
        body.append([
            r["family"], r["case"], r["device"], r["row"],
            fmt_time(r["median_s"]) if timed else "not timed",
            fmt_time(r["q3_s"] - r["q1_s"]) if timed else "-",
            fmt_time(r["min_s"]) if timed else "-",
            f"{sp:.2f}" if sp is not None else "-",
            fmt_bytes(r.get("host_peak_bytes")), fmt_bytes(r.get("device_peak_bytes")),
            r["status"] + (f" ({r['note']})" if r["note"] else ""),
        ])
    return _grid(header, body)


def wrap(text: str, width: int = SCREEN_WIDTH, indent: str = "") -> list[str]:
    """``text`` as lines of at most ``width`` columns, continuation lines indented by ``indent``."""
    return textwrap.wrap(text, width, subsequent_indent=indent, break_on_hyphens=False) or [""]


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: max(n - 2, 0)] + ".."


def _short_status(status: str) -> str:
    """The check on screen: the legend explains the parenthesised parts of the common statuses."""
    if status.startswith(("same set", "differs (documented")):
        return status.split(" (")[0]
    if status.startswith("baseline"):
        return "baseline (no NMS)"
    return status


def case_terms(families: list[str]) -> list[str]:
    """'<family> cases: <what the letters of a case name mean>', for the families given."""
    from .scenarios import FAMILIES

    return [f"{f} cases: {FAMILIES[f].case_terms}" for f in families
            if f in FAMILIES and FAMILIES[f].case_terms]


def screen_table(records: list[dict], width: int = SCREEN_WIDTH) -> str:
    """The table for the terminal: one block per (op, device), titled with the op and what its case
    names mean, rows of case, contender, median, x torchvision and check (notes as [n] below the
    block), every line at most ``width`` columns (free text is clipped with '..'; results.md and
    --wide have it in full)."""
    from .scenarios import FAMILIES

    blocks: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        blocks[(r["family"], r["device"])].append(r)
    out: list[str] = []
    for (fam, dev), rs in blocks.items():
        f = FAMILIES.get(fam)
        out += wrap(f"{fam} on {dev}" + (f": {f.title}" if f is not None and f.title else ""), width)
        if f is not None and f.case_terms:
            out += wrap("  case: " + f.case_terms, width, "    ")
        notes: list[str] = []
        body = []
        for r in rs:
            sp = r.get("speedup_vs_torchvision")
            check = _short_status(r["status"])
            if r["note"]:
                if r["note"] not in notes:
                    notes.append(r["note"])
                check += f" [{notes.index(r['note']) + 1}]"
            body.append([r["case"], r["row"], fmt_time(r["median_s"]) if r["timed"] else "not timed",
                         f"{sp:.2f}" if sp is not None else "-", check])
        header = ["case", "contender", "median", "x tv", "check"]
        w = [max(len(c) for c in col) for col in zip(header, *body)]
        # "| " + " | ".join(cells) + " |": 3 columns per cell plus one; clip check, then contender, then case
        for i, floor in ((4, 12), (1, 20), (0, 20)):
            over = sum(w) + 3 * len(w) + 1 - width
            if over > 0:
                w[i] = max(floor, w[i] - over)
        body = [[_clip(c, n) for c, n in zip(row, w)] for row in body]
        line = lambda cells: "| " + " | ".join(c.ljust(n) for c, n in zip(cells, w)) + " |"  # noqa: E731
        out += [line(header), "|" + "|".join("-" * (n + 2) for n in w) + "|", *map(line, body)]
        for i, n in enumerate(notes, 1):
            out += wrap(f"  [{i}] {n}", width, "      ")
        out.append("")
    return "\n".join(out).rstrip("\n")


def screen_header(env: dict) -> list[str]:
    """Short lines for the start of a run: what the compiled core was built for, CPU model and
    CPUs; threads and machine load."""
    t, load = env["threads"], env.get("load_average_1_5_15")
    omp = f" (OMP_NUM_THREADS={t['OMP_NUM_THREADS']})" if t.get("OMP_NUM_THREADS") else ""
    build = env.get("detkernels_build", {}).get("summary")
    return ([build] if build else []) + [
            f"CPU: {env['cpu']}; {env['usable_cpus']} usable of {env['logical_cpus']} logical CPUs",
            f"threads: detkernels {t['detkernels']}, torch {t['torch']}{omp}; load average "
            + (f"{' / '.join(f'{x:.2f}' for x in load)} (1 / 5 / 15 min)" if load else "unknown")
            + " at start"]


def summary(records: list[dict]) -> list[str]:
    """Per (device, op): which contender to run, how often it was fastest, and its speedup over
    torchvision (geometric mean and range over the cases where both were timed)."""
    by: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        by[(r["device"], r["family"])].append(r)
    lines = []
    for (dev, fam), recs in by.items():
        cases: dict[str, list[dict]] = defaultdict(list)
        for r in recs:
            if r["timed"] and r["kind"] != "baseline":
                cases[r["case"]].append(r)
        wins: dict[str, int] = defaultdict(int)
        ties: dict[str, int] = defaultdict(int)  # not fastest, but within the spread of the fastest
        ratios: dict[str, list[float]] = defaultdict(list)
        for rs in cases.values():
            f = min(rs, key=lambda r: r["median_s"])
            wins[f["row"]] += 1
            for r in rs:
                spread = max(r["q3_s"] - r["q1_s"], f["q3_s"] - f["q1_s"])
                if r is not f and r["median_s"] - f["median_s"] <= spread:
                    ties[r["row"]] += 1
            for r in rs:
                if r.get("speedup_vs_torchvision") is not None:
                    ratios[r["row"]].append(r["speedup_vs_torchvision"])
        ours = sorted({r["row"] for r in recs if r["kind"] == "detkernels" and r["timed"]},
                      key=lambda n: (-wins[n], -_geomean(ratios[n] or [0.0])))
        bad = sorted({f"{r['row']}: {r['status']}" for r in recs
                      if r["status"].startswith(("MISMATCH", "ERROR"))})
        if not ours:
            lines.append(f"{dev:7s} {fam:12s} no detkernels backend timed")
            continue
        best = ours[0]
        text = f"{dev:7s} {fam:12s} use {best}: fastest in {wins[best]}/{len(cases)} cases"
        if ties[best]:
            text += f" (and within the spread of the fastest in {ties[best]} more)"
        if ratios[best]:
            text += (f"; {_geomean(ratios[best]):.2f}x torchvision (geometric mean; "
                     f"{min(ratios[best]):.2f}x-{max(ratios[best]):.2f}x)")
        others = [f"{n} fastest in {wins[n]}" for n in wins if n != best and wins[n]]
        if others:
            text += "; " + ", ".join(others)
        if bad:
            text += "; PROBLEMS: " + "; ".join(bad)
        lines.append(text)
    return lines


def _geomean(xs: list[float]) -> float:
    xs = [x for x in xs if x > 0]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")


def workspace_table(records: list[dict]) -> str | None:
    """Peak memory of single-class NMS against N (the N sweep), per device and contender."""
    rs = [r for r in records if r["family"] == "nms" and "N" in r["sweeps"] and r["timed"]]
    if not rs:
        return None
    body = [[r["device"], r["row"], str(r["params"]["N"]), fmt_bytes(r.get("host_peak_bytes")),
             fmt_bytes(r.get("device_peak_bytes")),
             f"{(r.get('host_peak_bytes') or 0) / r['params']['N']:.0f}"]
            for r in sorted(rs, key=lambda r: (r["device"], r["row"], r["params"]["N"]))]
    return _grid(["device", "contender", "N", "peak host", "peak device", "host bytes/box"], body)


def _env_lines(env: dict) -> list[str]:
    v = env["versions"]
    lines = [
        f"- host: {env['hostname']} ({env['platform']}), Python {env['python']}",
        f"- CPU: {env['cpu']}; {env['usable_cpus']} usable of {env['logical_cpus']} logical CPUs; "
        f"load average (1/5/15 min) {env['load_average_1_5_15']} at start, "
        f"{env.get('load_average_end')} at end",
        f"- threads: detkernels {env['threads']['detkernels']}"
        + (f" (on {rt} threads)" if (rt := env['detkernels_build'].get('thread_runtime')) else "")
        + f", torch {env['threads']['torch']}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        f"- detkernels build: CUDA {env['detkernels_build'].get('cuda_version')}, "
        f"backends {env['detkernels_backends']}",
    ]
    for dev, d in env["devices"].items():
        if dev != "cpu":
            lines.append(f"- {dev}: {d['name']} (sm {d['capability']}, {fmt_bytes(d['memory_bytes'])}), "
                         f"driver {d['driver']}, torch CUDA {env.get('torch_cuda')}")
    return lines


def write_json(path: Path, env: dict, records: list[dict], notes: list[str], meta: dict) -> None:
    doc = {"schema": SCHEMA, "meta": meta, "environment": env, "notes": notes,
           "methods": {"host_peak": HOST_PEAK_METHOD,
                       "device_peak": "torch.cuda.max_memory_allocated after a reset, minus the "
                                      "memory allocated before the call",
                       "time": "median and interquartile range over repeats; contenders alternate "
                               "within each repeat; CUDA times from CUDA events after warm-up"},
           "summary": summary(records), "results": records}
    path.write_text(json.dumps(doc, indent=1, default=_jsonable) + "\n")


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def write_markdown(path: Path, env: dict, records: list[dict], notes: list[str], meta: dict,
                   plots: list[str]) -> str:
    """results.md: environment, summary, notes, the table, NMS memory; returns the text."""
    parts = [f"# detkernels benchmark ({meta['mode']})", "", f"Command: `{meta['command']}`", "",
             *_env_lines(env), "", "## Summary", "", *[f"    {s}" for s in summary(records)], ""]
    if notes:
        parts += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    fams = list(dict.fromkeys(r["family"] for r in records))
    terms = case_terms(fams)
    parts += ["## Results", "", LEGEND, ""]
    if terms:
        parts += ["Case names:", "", *[f"- {t}" for t in terms], ""]
    parts += [table(records), ""]
    ws = workspace_table(records)
    if ws:
        parts += ["## NMS peak memory vs N", "", ws, "", HOST_PEAK_METHOD, ""]
    if plots:
        parts += ["## Plots", "", *[f"![{p}]({p})" for p in plots], ""]
    text = "\n".join(parts)
    path.write_text(text)
    return text
