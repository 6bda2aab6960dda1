"""The native CPU thread pool behind parallel_for (csrc/common/parallel.cpp), through the public API:
results byte-identical for any thread count, concurrent Python callers (the bindings release the
GIL), nesting, exceptions, set_num_threads mid-process, fork and interpreter exit. Every test runs
twice: on the pool's own threads and on torch's OpenMP runtime (what the pool uses once torch is
imported: parallel.cpp, "Sharing torch's OpenMP runtime").

`_C.testing.parallel_probe` reaches what no kernel does (nesting, a throwing chunk, a rendezvous
that proves chunks really run on distinct threads); see its comment in csrc/common/parallel.h."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from _helpers import assert_bytes_equal

torch = pytest.importorskip("torch")  # before detkernels: its custom ops register at import

import detkernels  # noqa: E402
from detkernels import _registry  # noqa: E402

if _registry.available_backends().get("native") != "available":
    pytest.skip("native backend not built", allow_module_level=True)

from detkernels import _C  # noqa: E402
from detkernels.backends import native  # noqa: E402

THREADS = [1, 2, 3, 8]  # 8 > the cores of a small CI machine on purpose
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def _restore_threads():
    n = detkernels.get_num_threads()
    yield
    detkernels.set_num_threads(n)


@pytest.fixture(autouse=True, params=["own", "openmp"])
def runtime(request):
    """Whose threads run the jobs: the pool's own, or torch's OpenMP runtime's."""
    before = _C.thread_runtime()
    if request.param == "own":
        _C.use_own_pool()
    elif not native.share_torch_threads(torch):
        pytest.skip("torch's parallel backend is not OpenMP here (or DETKERNELS_SHARE_OPENMP=0)")
    assert _C.thread_runtime().startswith(request.param)
    yield request.param
    if before == "own":
        _C.use_own_pool()
    else:
        native.share_torch_threads(torch)


def _boxes(g: np.random.Generator, n: int, lo: float, hi: float, span: float = 1000.0) -> np.ndarray:
    xy = g.uniform(0, span, (n, 2))
    wh = g.uniform(lo, hi, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def _workloads(seed: int) -> dict:
    """name -> zero-argument callable returning numpy arrays; each is big enough that every
    parallel_for in it splits into several chunks at 3 and 8 threads."""
    g = np.random.default_rng(seed)
    # NMS: small boxes keep most candidates, so the per-block suppression test goes parallel;
    # duplicated boxes and quantised scores add exact ties.
    b = _boxes(g, 3000, 5, 40)
    b[100:200] = b[:100]
    s = np.round(g.uniform(0, 1, 3000), 2).astype(np.float32)
    cls = g.integers(0, 40, 3000)  # 40 comparable classes: the per-segment parallel path
    mb = np.stack([_boxes(g, 4000, 5, 60) for _ in range(16)])
    ms = g.uniform(0, 1, (16, 4000, 2)).astype(np.float32)  # 128k candidates: parallel sort
    b1, b2 = _boxes(g, 300, 1, 200), _boxes(g, 1000, 1, 200)
    b1[:5] = np.nan  # NaN rows stay NaN rows whichever thread computes them
    db = np.stack([_boxes(g, 5000, 5, 60) for _ in range(3)])
    ds = np.round(g.uniform(0, 0.2, (3, 5000, 20)), 2).astype(np.float32)  # tied scores

    feat_cl = torch.from_numpy(g.standard_normal((2, 64, 24, 32)).astype(np.float32))
    rois_cl = torch.from_numpy(np.concatenate(
        [g.integers(0, 2, (200, 1)), _boxes(g, 200, 1, 20, span=32)], 1).astype(np.float32))
    feat_pc = torch.from_numpy(g.standard_normal((1, 32, 128, 128)).astype(np.float32))
    rois_pc = torch.from_numpy(np.concatenate(
        [np.zeros((6, 1)), _boxes(g, 6, 4, 60, span=120)], 1).astype(np.float32))
    feat_ps = torch.from_numpy(g.standard_normal((2, 4 * 49, 20, 20)).astype(np.float32))
    rois_ps = torch.from_numpy(np.concatenate(
        [g.integers(0, 2, (50, 1)), _boxes(g, 50, 1, 10, span=20)], 1).astype(np.float32))

    def with_grad(op, feat, rois, *args, **kw):
        x = feat.clone().requires_grad_(True)
        y = op(x, rois, *args, backend="native", **kw)
        gy = torch.from_numpy(np.random.default_rng(seed + 1).standard_normal(tuple(y.shape))
                              .astype(np.float32))
        y.backward(gy)
        return y.detach().numpy(), x.grad.numpy()

    def multi():
        idx, kept_cls, counts = detkernels.multi_image_nms(mb, ms, 0.5, 300, score_threshold=0.05,
                                                           backend="native")
        return idx, kept_cls, counts

    return {
        "box_iou": lambda: detkernels.box_iou(b1, b2, backend="native"),
        "generalized_box_iou": lambda: detkernels.generalized_box_iou(b1, b2, backend="native"),
        "nms": lambda: detkernels.nms(b, s, 0.5, backend="native"),
        "batched_nms": lambda: detkernels.batched_nms(b, s, cls, 0.3, backend="native"),
        "multi_image_nms": multi,
        "roi_align channels-last": lambda: with_grad(detkernels.roi_align, feat_cl, rois_cl, (7, 7),
                                                     0.5, 2, True),
        "roi_align per-channel": lambda: with_grad(detkernels.roi_align, feat_pc, rois_pc, (7, 7),
                                                   1.0, -1, False),
        "ps_roi_align": lambda: with_grad(detkernels.ps_roi_align, feat_ps, rois_ps, (7, 7), 1.0, 2),
        "roi_pool": lambda: with_grad(detkernels.roi_pool, feat_cl, rois_cl, (7, 7), 0.5),
        "ps_roi_pool": lambda: with_grad(detkernels.ps_roi_pool, feat_ps, rois_ps, (7, 7), 1.0),
        # 3 images of 3 anchor blocks: images on the pool, or blocks (more threads than images).
        "detect": lambda: tuple(detkernels.detect(db, ds, 0.5, 100, score_threshold=0.05,
                                                  pre_nms_top_k=500, backend="native")),
    }


def _as_tuple(r) -> tuple:
    return tuple(np.asarray(x) for x in (r if isinstance(r, tuple) else (r,)))


def _assert_same(actual, expected, what: str) -> None:
    a, e = _as_tuple(actual), _as_tuple(expected)
    assert len(a) == len(e), what
    for i, (x, y) in enumerate(zip(a, e)):
        assert_bytes_equal(x, y, f"{what}[{i}]")


WORKLOADS = _workloads(0)


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_results_independent_of_thread_count(name):
    fn = WORKLOADS[name]
    detkernels.set_num_threads(1)
    expected = fn()
    for t in THREADS[1:]:
        detkernels.set_num_threads(t)
        for _ in range(2):  # the second call reuses the warm pool
            _assert_same(fn(), expected, f"{name} at {t} threads")


def test_single_thread_matches_reference():
    """The thread-count tests compare native with itself; anchor the NMS/IoU workloads to the
    NumPy reference once (at 3 threads, uneven chunks)."""
    g = np.random.default_rng(7)
    b, s = _boxes(g, 1500, 5, 40), g.uniform(0, 1, 1500).astype(np.float32)
    b1, b2 = _boxes(g, 300, 1, 200), _boxes(g, 700, 1, 200)
    detkernels.set_num_threads(3)
    assert_bytes_equal(detkernels.nms(b, s, 0.5, backend="native"),
                       detkernels.nms(b, s, 0.5, backend="numpy"), "nms")
    assert_bytes_equal(detkernels.box_iou(b1, b2, backend="native"),
                       detkernels.box_iou(b1, b2, backend="numpy"), "box_iou")


@pytest.mark.parametrize("threads", [2, 3])
def test_concurrent_python_threads(threads):
    """8 Python threads run every workload at once (the bindings release the GIL, so they really
    contend for the pool: the loser of a collision runs inline); every result is still exact."""
    detkernels.set_num_threads(1)
    names = list(WORKLOADS)
    expected = {n: WORKLOADS[n]() for n in names}
    detkernels.set_num_threads(threads)
    barrier = threading.Barrier(8)
    failures: list[str] = []

    def worker(k: int) -> None:
        try:
            barrier.wait(timeout=60)
            for it in range(2):
                for n in names[k % len(names):] + names[:k % len(names)]:
                    _assert_same(WORKLOADS[n](), expected[n], f"thread {k} iteration {it} {n}")
                r = _C.testing.parallel_probe(1000, 10, 0, -1, 0)
                assert r[0] in (1, min(threads, 100)) and r[5:] == [1] * 1000, r[:5]
        except BaseException as e:  # reported below, with the thread that saw it
            failures.append(f"{type(e).__name__}: {e}")

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in ts), "a caller hung"
    assert not failures, failures[:3]


def test_set_num_threads_while_others_run():
    """set_num_threads from one thread while four others run (nested) parallel loops: each call
    sees one thread count (chunks in 1..8) and still covers every element exactly once."""
    stop = threading.Event()
    failures: list[str] = []

    def toggle() -> None:
        k = 0
        while not stop.is_set():
            detkernels.set_num_threads(1 + k % 8)
            k += 1

    def call(seed: int) -> None:
        g = np.random.default_rng(seed)
        try:
            for _ in range(200):
                n, grain = int(g.integers(1, 3000)), int(g.integers(1, 60))
                r = _C.testing.parallel_probe(n, grain, 4, -1, 0)
                assert 1 <= r[0] <= min(8, -(-n // grain)), (n, grain, r[:5])
                # Nested loops of a split job run inline; one under an unsplit (inline) call
                # may still use the pool.
                assert (r[2:4] == [r[0], 0]) if r[0] > 1 else (1 <= r[2] + r[3] <= 4), r[:5]
                assert r[5:] == [1] * n, (n, grain)
        except BaseException as e:  # reported below
            failures.append(f"{type(e).__name__}: {e}")

    t = threading.Thread(target=toggle)
    ts = [threading.Thread(target=call, args=(k,)) for k in range(4)]
    t.start()
    for c in ts:
        c.start()
    for c in ts:
        c.join(timeout=300)
    stop.set()
    t.join()
    assert not any(c.is_alive() for c in ts), "a caller hung"
    assert not failures, failures[:3]


def test_chunks_follow_set_num_threads():
    """Grow, shrink, grow again in one process. The rendezvous makes every chunk wait until all
    have started, so it completes only if each chunk really has its own thread."""
    for t, n, chunks in [(2, 100, 2), (5, 100, 5), (3, 100, 3), (1, 100, 1), (8, 100, 8),
                         (4, 100, 4), (8, 9, 5), (8, 3, 3)]:
        detkernels.set_num_threads(t)
        r = _C.testing.parallel_probe(n, 1, 0, -1, chunks)
        assert r[:5] == [chunks, chunks, 0, 0, 0], (t, n, r[:5])
        assert r[5:] == [1] * n


def test_grain_bounds_chunks():
    detkernels.set_num_threads(8)
    assert _C.testing.parallel_probe(100, 40, 0, -1, 0)[0] == 3  # ceil(100 / 40)
    assert _C.testing.parallel_probe(100, 100, 0, -1, 0)[:2] == [1, 1]  # inline
    assert _C.testing.parallel_probe(0, 1, 0, -1, 0)[0] == 0


def test_nested_runs_inline():
    detkernels.set_num_threads(4)
    r = _C.testing.parallel_probe(400, 1, 16, -1, 4)
    # 4 chunks on 4 threads; each nested loop is one chunk on its outer chunk's thread.
    assert r[:5] == [4, 4, 4, 0, 0]
    assert r[5:] == [1] * 400


def test_exception_propagates_and_pool_survives():
    detkernels.set_num_threads(4)
    for at in (0, 150, 399):  # the caller's chunk, a worker's chunk, the last chunk
        with pytest.raises(RuntimeError, match=r"parallel_probe: chunk \[\d+, \d+\) threw"):
            _C.testing.parallel_probe(400, 1, 0, at, 0)
    r = _C.testing.parallel_probe(400, 1, 0, -1, 4)
    assert r[:5] == [4, 4, 0, 0, 0] and r[5:] == [1] * 400


def _run_script(body: str, runtime: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs FORK_HELPERS + body in a fresh interpreter whose pool runs on `runtime`'s threads
    (openmp: torch imported first; own: DETKERNELS_SHARE_OPENMP=0, so a torch import keeps them)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]),
               DETKERNELS_SHARE_OPENMP="1" if runtime == "openmp" else "0")
    first = ("import torch\nassert detkernels._C.thread_runtime().startswith('openmp:')\n"
             if runtime == "openmp" else "")
    code = ("import os, sys, threading, time\nimport numpy as np\nimport detkernels\n" + first
            + FORK_HELPERS + textwrap.dedent(body))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout)


FORK_HELPERS = """
g = np.random.default_rng(0)
xy = g.uniform(0, 1000, (3000, 2)); wh = g.uniform(5, 40, (3000, 2))
B = np.concatenate([xy, xy + wh], 1).astype(np.float32)
S = g.uniform(0, 1, 3000).astype(np.float32)
def work():
    return (detkernels.nms(B, S, 0.5, backend="native"),
            detkernels.box_iou(B[:300], B, backend="native"),
            detkernels._C.testing.parallel_probe(64, 1, 0, -1, 3))  # 3 chunks on 3 threads at once
detkernels.set_num_threads(3)
expected = work()
def same(r):
    return (np.array_equal(r[0], expected[0]) and r[1].tobytes() == expected[1].tobytes()
            and r[2][:5] == [3, 3, 0, 0, 0] and r[2][5:] == [1] * 64)
def wait_child(pid, seconds=30):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return "hung"
"""


def test_fork_child_gets_a_fresh_pool(runtime):
    """fork after the pool started, including while another thread is inside a parallel job (the
    old pool's locks held by a thread the child does not have): the child's kernels finish on a
    pool of its own threads (also when the parent's ran on torch's OpenMP runtime, whose threads
    do not survive fork either) and it exits 0."""
    r = _run_script("""
    stop = False
    def busy():
        while not stop:
            assert same(work())
    t = threading.Thread(target=busy)
    t.start()
    codes = []
    for i in range(20):
        pid = os.fork()
        if pid == 0:
            ok = all(same(work()) for _ in range(2)) and detkernels._C.thread_runtime() == "own"
            detkernels.set_num_threads(5)  # the child's pool grows too
            r = detkernels._C.testing.parallel_probe(50, 1, 0, -1, 5)
            os._exit(0 if ok and r[:5] == [5, 5, 0, 0, 0] else 1)
        codes.append(wait_child(pid))
        if codes[-1] != 0:
            break
    stop = True
    t.join()
    print(codes)
    sys.exit(0 if codes == [0] * 20 else 1)
    """, runtime)
    assert r.returncode == 0, r.stdout + r.stderr


def test_multiprocessing_fork_context(runtime):
    r = _run_script("""
    import multiprocessing as mp
    def task(i):
        return same(work())
    if __name__ == "__main__":
        with mp.get_context("fork").Pool(2) as p:
            res = p.map_async(task, range(4)).get(timeout=60)
        sys.exit(0 if res == [True] * 4 else 1)
    """, runtime)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("how", ["return", "sys.exit", "after-other-thread", "daemon-in-kernel"])
def test_interpreter_exits_cleanly(how, runtime):
    """Workers are detached and the pool is never torn down: an interpreter that used an 8-worker
    pool exits 0 without waiting for them -- also while a daemon thread is inside a kernel (its
    GIL re-acquisition at shutdown ends the thread; with pybind11's noexcept gil_scoped_release
    that aborted the process, pybind11 #2215)."""
    r = _run_script(f"""
    detkernels.set_num_threads(8)
    work()
    if "{how}" == "after-other-thread":
        t = threading.Thread(target=lambda: [work() for _ in range(3)])
        t.start()
        t.join()
    if "{how}" == "daemon-in-kernel":
        def spin():
            while True:
                work()
        for _ in range(3):
            threading.Thread(target=spin, daemon=True).start()
        time.sleep(0.3)
    if "{how}" == "sys.exit":
        sys.exit(0)
    print("done")
    """, runtime, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("lib", ["numpy", "torch", "torch-grad"])
def test_exit_while_daemon_threads_are_inside_every_op(lib, runtime):
    """Issue 19.2: one daemon thread per public op is inside its kernel when the interpreter exits.
    Its GIL re-acquisition then ends the thread with a forced unwind, which must pass every frame
    between the kernel and the thread's start. Torch RoI calls went through torch's dispatcher,
    whose noexcept pybind11 GIL guard turned that unwind into std::terminate (SIGABRT in 13 of 13
    runs); the multi-image NMS bindings had the same guard. The calls are long (12 threads share
    2 cores) and the main thread exits 0.15 s after all have entered them, so each thread is still
    in its kernel then (asserted); results are kept, so no torch tensor is freed during the exit
    (torch's own frames have the same noexcept guard: a torch op or tensor free in a daemon thread
    at exit aborts with torch alone)."""
    if lib != "numpy":
        pytest.importorskip("torch")
    r = _run_script(f"""
    lib = "{lib}"
    if lib != "numpy":
        import torch
    def arr(a, grad=False):
        if lib == "numpy":
            return a
        t = torch.from_numpy(np.ascontiguousarray(a))
        return t.requires_grad_() if grad and lib == "torch-grad" else t
    def boxes(n, span):
        xy = g.uniform(0, span, (n, 2)); wh = g.uniform(2, 20, (n, 2))
        return np.concatenate([xy, xy + wh], 1).astype(np.float32)
    b, b64 = arr(boxes(4000, 1000)), arr(boxes(6000, 1000).astype(np.float64))
    bn = arr(boxes(24000, 20000))
    # Issue 16: sparse boxes take the pruned CPU NMS (milliseconds); the plain path keeps these
    # calls long, as the test needs.
    detkernels._C.testing.nms_set_path(1)
    s = arr(g.uniform(0, 1, 24000).astype(np.float32))
    labels = arr(np.arange(24000) % 2)
    b3, s3 = arr(boxes(24000, 20000).reshape(2, 12000, 4)), arr(g.uniform(0, 1, (2, 12000)).astype(np.float32))
    x = arr(g.standard_normal((1, 256, 64, 64)).astype(np.float32), grad=True)
    xp = arr(g.standard_normal((1, 16 * 49, 64, 64)).astype(np.float32), grad=True)
    rr = g.uniform(0, 40, (6000, 5)).astype(np.float32)
    rr[:, 0] = 0; rr[:, 3:] += rr[:, 1:3]
    rois, rois_pool = arr(rr), arr(rr[:1000])
    ops = {{"box_iou": lambda: detkernels.box_iou(b64, b64), "giou": lambda: detkernels.generalized_box_iou(b64, b64),
           "diou": lambda: detkernels.distance_box_iou(b, b), "ciou": lambda: detkernels.complete_box_iou(b, b),
           "nms": lambda: detkernels.nms(bn, s, 0.5), "batched_nms": lambda: detkernels.batched_nms(bn, s, labels, 0.5),
           "nms_padded": lambda: detkernels.nms_padded(bn, s, 0.5, 24000),
           "multi_image_nms": lambda: detkernels.multi_image_nms(b3, s3, 0.5, 12000),
           "roi_align": lambda: detkernels.roi_align(x, rois, 7, 1.0, 2),
           "ps_roi_align": lambda: detkernels.ps_roi_align(xp, rois, 7, 1.0, 4),
           "roi_pool": lambda: detkernels.roi_pool(x, rois_pool, 7, 1.0),
           "ps_roi_pool": lambda: detkernels.ps_roi_pool(xp, rois, 7, 1.0)}}
    entered, done, keep = set(), set(), []
    def call(name):
        entered.add(name)
        keep.append(ops[name]())
        done.add(name)
        threading.Event().wait()
    for name in reversed(ops):  # the shortest calls (box_iou, giou) start last
        threading.Thread(target=call, args=(name,), daemon=True).start()
    while len(entered) < len(ops):
        time.sleep(0.001)
    time.sleep(0.15)
    print("still inside:", sorted(set(ops) - done))
    """, runtime, timeout=180)
    assert r.returncode == 0, (r.returncode, r.stdout + r.stderr)
    assert "still inside: ['batched_nms', 'box_iou', 'ciou', 'diou', 'giou', 'multi_image_nms', 'nms', " \
           "'nms_padded', 'ps_roi_align', 'ps_roi_pool', 'roi_align', 'roi_pool']" in r.stdout, r.stdout


def test_contended_job_backs_off_to_inline():
    """Busy cores (issue 21): after a split job whose caller waited on a worker longer than it
    worked (here the worker's chunk sleeps 5 ms), the next parallel call runs inline on the
    caller's thread, and the backoff is then spent."""
    detkernels.set_num_threads(2)
    assert _C.testing.parallel_backoff_probe(5000) == [1, 1, 0]
    # The probes of the pool itself reset the backoff: splitting works again at once.
    assert _C.testing.parallel_probe(2, 1, 0, -1, 2)[:5] == [2, 2, 0, 0, 0]


def test_coarse_jobs_claim_elements_one_at_a_time_and_ignore_the_backoff():
    """parallel_for_coarse (detect's images and anchor blocks): a backoff set by a contended short
    job does not make it run inline (the rendezvous of 2 elements completes only on 2 threads),
    nor does it spend or set the backoff; and a worker that sleeps 50 ms in each element it takes
    leaves the other elements to the caller (one-element claims), where contiguous halves would
    have given the worker half of them."""
    detkernels.set_num_threads(2)
    before, after, n, mine, threads, timed_out = _C.testing.parallel_coarse_probe(2, 0, 2)
    assert (before, after, n, mine, threads, timed_out) == (1, 1, 2, 1, 2, 0)
    before, after, n, mine, threads, timed_out = _C.testing.parallel_coarse_probe(16, 50_000, 0)
    assert (before, after, n) == (1, 1, 16)
    assert mine >= 14, mine  # the worker took at most 2 (it wakes, takes one, sleeps 50 ms)
    detkernels.set_num_threads(1)
    assert _C.testing.parallel_coarse_probe(4, 0, 0)[2:5] == [4, 4, 1]  # one thread: inline
