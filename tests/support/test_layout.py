"""The package's shape: imports inside detkernels run one way (no cycle, counting imports inside
functions too), and every ``DK_HD`` function of the op headers has its Numba twin."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "detkernels"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    mods = {_module_name(p): p for p in PKG.rglob("*.py")}
    mods["detkernels._C"] = PKG / "_C"  # the compiled core: a leaf
    return mods


def import_graph() -> dict[str, set[str]]:
    """Module -> the detkernels modules it imports (every import statement, at any depth)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        if name == "detkernels._C":
            graph[name] = set()
            continue
        is_pkg = path.name == "__init__.py"
        pkg = name if is_pkg else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in mods and t != name}
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    graph = import_graph()
    assert "detkernels.api.nms" in graph and "detkernels._dispatch" in graph["detkernels.api.nms"]
    assert _cycles(graph) == []


def test_cycle_detection_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers_run_downward():
    """Below the public API nothing imports it; backends never import the registry or above."""
    graph = import_graph()
    above_backends = ("detkernels._registry", "detkernels._dispatch", "detkernels._checks", "detkernels.api")
    for mod, deps in graph.items():
        if mod.startswith(("detkernels.backends", "detkernels.reference", "detkernels._constants",
                           "detkernels._arrays")):
            bad = [d for d in deps if d.startswith(above_backends) or d.startswith("detkernels._torch")]
            assert not bad, f"{mod} imports {bad}"
        if mod in ("detkernels._dispatch", "detkernels._checks", "detkernels._registry") or \
                mod in ("detkernels._torch.common", "detkernels._torch.iou", "detkernels._torch.nms",
                        "detkernels._torch.roi"):
            bad = [d for d in deps if d.startswith("detkernels.api")]
            assert not bad, f"{mod} imports the public API: {bad}"


# ---- Numba twins of the C++ maths ----------------------------------------------------------------
# The numba backend cannot compile C++, so each __host__ __device__ function of csrc/ops/*/*.h
# that holds maths has a Python twin in detkernels/backends/numba/ (compiled for @njit and
# numba.cuda), tested byte for byte against the reference like every backend. A DK_HD function
# with no twin must be listed here with the reason.
NB = "detkernels.backends.numba."
TWINS = {  # C++ function -> "module:function" of its twin
    # box_iou.h
    "eval": NB + "box_math:atan_eval_f32", "dk_atan": NB + "box_math:dk_atan",
    "box_area": NB + "box_math:box_area", "box_corners": NB + "box_math:box_corners",
    "pair_iou": NB + "box_math:pair_iou",
    "diou_penalty": NB + "box_math:diou_penalty", "diou_penalty_of": NB + "box_math:diou_penalty_of",
    # soft_nms.h (issue 13; numba/cpu.py, and numba/cuda.py for matrix_nms)
    "dk_exp": NB + "box_math:dk_exp", "dk_floor": NB + "box_math:dk_floor",
    "dk_ldexp": NB + "box_math:dk_ldexp", "dk_pow2": NB + "box_math:dk_ldexp",  # math.ldexp there
    "soft_nms_weight": NB + "box_math:soft_nms_weight", "ranks_before": NB + "box_math:ranks_before",
    # ExpCoef's two halves and the Gaussian's exponent (split out for the CPU's vector lanes)
    "round_arg": NB + "box_math:dk_exp", "mantissa": NB + "box_math:dk_exp",
    "soft_gaussian_arg": NB + "box_math:soft_nms_weight",
    # diou_nms.h, matrix_nms.h (issue 13; numba/cpu.py; matrix_nms_term also numba/cuda.py)
    "dk_log": NB + "box_math:dk_log", "dk_pow": NB + "box_math:dk_pow",
    "diou_nms_measure": NB + "box_math:diou_nms_measure", "matrix_nms_term": NB + "box_math:matrix_nms_term",
    # nms.h
    "nms_area": NB + "box_math:nms_area", "nms_iou": NB + "box_math:nms_iou",
    "nms_suppresses": NB + "box_math:nms_suppresses",
    # nms_bitmask.h: the bitmask and its scan, as numba.cuda kernels
    "nms_mask_word": NB + "cuda:nms_mask_kernel", "nms_block_live": NB + "cuda:nms_mask_kernel",
    "nms_scan_rowblock": NB + "cuda:nms_scan_kernel", "nms_mask_width": NB + "cuda:_suppress",
    "nms_tile_rows": "detkernels._constants:nms_tile_rows",
    # roi_align.h / roi_align_gpu.h forward
    "roi_batch_index": NB + "roi_math:batch_index", "roi_grid": NB + "roi_math:grid_size",
    "roi_align_box": NB + "roi_math:align_geometry", "roi_axis_sample": NB + "roi_math:sample_pos",
    "roi_axis_coord": NB + "roi_math:sample_pos", "roi_axis_tap": NB + "roi_math:sample_pos",  # its two halves
    "roi_weights": NB + "roi_math:bilinear_weights", "roi_bilinear": NB + "roi_math:bilinear",
    "roi_align_output": NB + "roi_math:align_element",
    # roi_pool.h / roi_pool_gpu.h forward
    "c_round": NB + "roi_math:round_coord", "roi_pool_coord": NB + "roi_math:round_coord",
    "roi_pool_box": NB + "roi_math:pool_geometry", "roi_pool_bin": NB + "roi_math:pool_bin",
    "roi_pool_lowest": NB + "roi_math:constants", "roi_pool_bin_value": NB + "roi_math:pool_element",
    "roi_pool_output": NB + "roi_math:pool_element",
    # detect_gpu.h (issue 12): the per-anchor pass and the padded outputs
    "detect_gpu_score": NB + "box_math:detect_anchor", "detect_gpu_output": NB + "cuda:detect_output_kernel",
}
_SORT_KEYS = "radix-sort key packing of the native/CuPy CUDA plan; numba plans with stable torch/NumPy sorts"
_PLAN = "candidate planning of the native/CuPy CUDA plan; numba's is torch/NumPy array code (numba/__init__.py)"
_SCATTER = ("a step of the native/CuPy sort-based RoI backward; numba's backwards are owner-computes "
            "(roi_math.align_grad, roi_cpu/roi_cuda pool kernels)")
_ROTATED = ("rotated boxes and ProbIoU (box_iou_rotated.h): the numba backend serves none of box_iou_rotated, "
            "nms_rotated, probiou, nms_probiou (native and numpy only; the registry says so)")
_SPARSE_GPU = ("a step of the native CUDA sparse NMS path (nms_sparse_gpu.h, issue 16); the numba CUDA "
               "backend runs the bitmask only (README status)")
NOT_NEEDED = {
    "wrap_add": "integer boxes: the numba backend serves float boxes only (README status)",
    "wrap_sub": "integer boxes: the numba backend serves float boxes only (README status)",
    "wrap_mul": "integer boxes: the numba backend serves float boxes only (README status)",
    "score_before": "numba orders candidates with reference.nms.score_order (a host/torch stable sort)",
    "nms_inf": "+inf from its bits, for NVRTC (no <cmath>); numba and NumPy have math.inf",
    **{f: _SORT_KEYS for f in ("nms_bits_of", "nms_score_key", "nms_score_key_bits", "nms_dropped_key",
                               "nms_class_key", "nms_image_key", "nms_key_bits", "nms_final_key")},
    **{f: _PLAN for f in ("nms_cand_box", "nms_cand_class", "nms_cand_valid", "nms_head", "nms_count_kept",
                          "nms_gather_slot")},
    **{f: _ROTATED for f in ("rp_sub", "rp_cross", "rp_dot", "rp_abs", "rotated_half_cos_sin", "rotated_corners",
                             "rotated_corners_inside", "rotated_intersection_points", "convex_hull_area",
                             "rotated_pair_iou", "rotated_bounds", "rotated_apart", "dk_libm_cos", "dk_libm_sin",
                             "dk_libm_exp", "dk_libm_log", "probiou_cov", "probiou_from_bd", "probiou_pair",
                             "dk_dcos", "dk_dsin", "dk_dexp", "dk_dlog",
                             # RotatedIouMetric / ProbIouMetric members
                             "make", "prep", "value",
                             # the bitmask engine's box kinds (nms.h, nms_rotated_gpu.h) and its
                             # Fast-NMS switch: numba's NMS gathers axis-aligned boxes itself
                             "columns", "nms_pred_fast")},
    # diou_nms.h's frexp from bits (the device form of std::frexp; numba's dk_log uses math.frexp)
    "dk_frexp": "the NVRTC/nvcc-safe frexp of diou_nms.h's dk_log; numba's twin of dk_log calls math.frexp",
    # the bitmask engine's predicates (issue 13): NmsIouSuppress::operator() is nms_suppresses,
    # DiouNmsSuppress::operator() diou_nms_measure (numba's twins are those)
    "operator": "the bitmask NMS engine's predicate call operators (NmsIouSuppress, DiouNmsSuppress)",
    **{f: _SPARSE_GPU for f in ("nms_finite", "nms_sparse_coord_key", "nms_sparse_spread",
                                "nms_sparse_morton_key", "nms_sparse_regular", "nms_sparse_gather",
                                "nms_sparse_block_box", "nms_sparse_blocks_meet",
                                "nms_sparse_block_span", "nms_sparse_block_pairs",
                                "nms_sparse_partial_sum", "nms_sparse_decide", "nms_sparse_in_edges",
                                "nms_sparse_edge_cap", "nms_sparse_check_cap", "nms_sparse_round_step",
                                "nms_sparse_init_state", "nms_sparse_finish", "nms_sparse_output",
                                "nms_sparse_neutralise")},
    # soft_nms_gpu.h, matrix_nms_gpu.h (issue 13): steps of the native CUDA Soft-NMS / Matrix NMS
    **{f: "a step of the native CUDA Soft-NMS / Matrix NMS (issue 13); the numba backend runs "
          "soft_nms with its own block kernel (numba/cuda.py soft_nms_kernel over box_math's "
          "ranks_before) and matrix_nms with its own column kernels"
       for f in ("soft_pick_none", "soft_pick_better", "soft_nms_init",
                 "soft_nms_rescale", "soft_nms_pick_limit", "soft_nms_emit", "matrix_nms_gather",
                 "matrix_nms_comp_tile", "matrix_nms_decay_tile", "matrix_nms_tile_rows",
                 "matrix_nms_finish", "matrix_nms_multi_emit")},
    # roi_align_rotated.h (issue 17): native and numpy only (README status)
    **{f: "roi_align_rotated: not served by the numba backend (README status)"
       for f in ("sincos_deg", "roi_rotated_grid", "roi_rotated_box", "roi_rotated_sample",
                 "roi_rotated_contrib_count", "roi_rotated_contrib", "roi_rotated_output")},
    **{f: _SCATTER for f in ("roi_contrib_count", "roi_contrib", "box", "slots", "contrib", "roi_pool_max_key",
                             "roi_pool_max_run_sum", "ps_roi_pool_len")},
    # detect_gpu.h (issue 12): numba's detect selects and compacts candidates in its host NumPy
    # plan (numba/__init__.py _multi_host_plan), not with the native sort/scan steps
    **{f: _PLAN for f in ("detect_gpu_candidates", "detect_gpu_slots", "detect_gpu_select",
                          "detect_gpu_pad", "detect_gpu_compact", "detect_gpu_count")},
}


def _dk_hd_functions() -> set[str]:
    names = set()
    for h in (ROOT / "csrc" / "ops").glob("*/*.h"):
        for m in re.finditer(r"DK_HD\s+(?:inline\s+)?[\w:<>,\s\*&]+?\b(\w+)\s*\(", h.read_text()):
            names.add(m.group(1))
    return names


def test_every_device_function_has_its_numba_twin():
    import importlib

    funcs = _dk_hd_functions()
    assert "roi_batch_index" in funcs and "nms_suppresses" in funcs  # the scan sees them
    missing = sorted(funcs - TWINS.keys() - NOT_NEEDED.keys())
    assert not missing, f"DK_HD functions without a Numba twin (add one, or list it in NOT_NEEDED with why): {missing}"
    for cpp, twin in TWINS.items():
        mod, fn = twin.split(":")
        assert hasattr(importlib.import_module(mod), fn), (cpp, twin)


def test_setup_ships_every_package():
    """setup.py lists packages by hand: a new sub-package missing there would install broken
    (a checkout still imports it, so no other test would notice)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    listed = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "packages":
            listed = {ast.literal_eval(e) for e in node.value.elts}
    on_disk = {_module_name(p) for p in PKG.rglob("__init__.py")}
    assert listed == on_disk


def test_detector_integrations_sit_above_the_api():
    """The ultralytics / torchvision-detector integrations build on the public detect and nothing
    in the package imports them (they load on attribute access: detkernels.ultralytics,
    detkernels.tv_detection)."""
    graph = import_graph()
    for mod in ("detkernels._torch.ultralytics", "detkernels._torch.tv_detection"):
        assert "detkernels.api.detect" in graph[mod]
        assert not [m for m, deps in graph.items() if mod in deps], mod
