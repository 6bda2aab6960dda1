"""The benchmark harness's timing loop, statistics, scenario planning and memory probe."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from detkernels.bench.scenarios import FAMILIES, plan
from detkernels.bench.timing import alternate, host_peak_bytes, stats


class FakeClock:
    """Records (contender, input) per call and 'takes' a fixed time per contender."""

    def __init__(self, cost: dict[str, float]) -> None:
        self.cost, self.calls = cost, []

    def __call__(self, fn, arg):
        name = fn(arg)
        self.calls.append((name, arg))
        return self.cost[name]


def test_alternate_rotates_contenders_and_inputs():
    fns = {n: (lambda arg, n=n: n) for n in "abc"}
    clock = FakeClock({"a": 0.1, "b": 0.2, "c": 0.2})
    samples = alternate(fns, ["x", "y"], clock, warmup=2, budget_s=2.5, min_repeats=3, max_repeats=100)
    warm, timed = clock.calls[:6], clock.calls[6:]
    assert warm == [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y"), ("c", "x"), ("c", "y")]
    assert {n: len(s) for n, s in samples.items()} == {"a": 5, "b": 5, "c": 5}  # 2.5 s / 0.5 s
    rounds = [timed[i:i + 3] for i in range(0, 15, 3)]
    orders = ["abc", "bca", "cab", "abc", "bca"]
    assert ["".join(n for n, _ in r) for r in rounds] == orders
    assert [{a for _, a in r} for r in rounds] == [{"x"}, {"y"}, {"x"}, {"y"}, {"x"}]


def test_alternate_clamps_repeats_and_skips_warmup_for_slow_calls():
    clock = FakeClock({"slow": 10.0})
    samples = alternate({"slow": lambda a: "slow"}, [0], clock, warmup=3, budget_s=1.0,
                        min_repeats=4, max_repeats=50)
    assert len(samples["slow"]) == 4
    assert len(clock.calls) == 1 + 4  # one warm-up: the repeats alone exceed the budget
    fast = FakeClock({"fast": 1e-9})
    assert len(alternate({"fast": lambda a: "fast"}, [0], fast, warmup=1, budget_s=1.0,
                         min_repeats=4, max_repeats=50)["fast"]) == 50


def test_stats_median_and_quartiles():
    st = stats([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (st.median, st.q1, st.q3, st.min, st.max, st.n) == (3.0, 2.0, 4.0, 1.0, 5.0, 5)
    assert st.iqr == 2.0


@pytest.mark.parametrize("mode", ["smoke", "quick", "full"])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_plan_is_one_factor_at_a_time(name, mode):
    fam = FAMILIES[name]
    base = {**fam.defaults, **fam.mode_defaults.get(mode, {})}
    cases = plan(fam, mode)
    keys = [tuple(sorted(c.params.items())) for c in cases]
    assert len(keys) == len(set(keys))
    assert base in [c.params for c in cases]
    for c in cases:
        changed = {k for k in base if c.params[k] != base[k]}
        assert len(changed) <= 1 and changed <= set(c.sweeps)
        for axis in c.sweeps:
            assert c.params[axis] in fam.sweeps[mode][axis]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS reset needs Linux /proc")
def test_host_peak_sees_memory_touched_by_the_call():
    def touch(n):
        a = np.ones(n, dtype=np.float64)  # written, so resident
        return float(a[-1])

    big = host_peak_bytes(touch, 8 << 20)  # 64 MiB
    assert big is not None and big >= 60 << 20
    assert host_peak_bytes(touch, 16) < 8 << 20
