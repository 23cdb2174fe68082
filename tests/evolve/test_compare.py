"""The comparison's statistics: Wilson intervals, summaries, success against budget."""

from __future__ import annotations

import pytest

from testtime.evolve.compare import success_curve, summarize, table, wilson_interval


def test_wilson_interval_matches_published_values():
    # 95% Wilson intervals (z = 1.96): 0/10 -> [0, 0.2775], 5/10 -> [0.2366, 0.7634], 10/10 -> [0.7225, 1]
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 0.0)


def _row(method, seed, solved, calls_to_solve, calls=8):
    return {
        "method": method, "instance": "i", "seed": seed, "solved": solved, "calls_to_solve": calls_to_solve,
        "calls": calls, "input_tokens": 100, "output_tokens": 10, "wall_seconds": 1.0, "price": 0.0,
    }  # fmt: skip


def test_summary_and_curve():
    rows = [
        _row("a", 0, True, 3),
        _row("a", 1, False, None),
        _row("a", 0, True, 8),
        _row("b", 0, False, None),
    ]
    (a, b) = summarize(rows)
    assert (a.method, a.runs, a.solved, b.solved) == ("a", 3, 2, 0)
    assert a.seed_std == pytest.approx(((1.0 - 0.5) ** 2 + (0.0 - 0.5) ** 2) ** 0.5)
    assert success_curve(rows, "a", [1, 3, 7, 8]) == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3])
    assert "| a | 2/3 (67%)" in table([a, b])


def test_parallel_runs_give_the_same_rows(tmp_path):
    from testtime.evolve import EvolveConfig
    from testtime.evolve.compare import run_comparison
    from testtime.llm.protocol import SamplingParams
    from testtime.tasks import get_task

    from .helpers import SeededFake

    task = get_task("countdown")
    instances = task.instances(seed=0, n=3, num_numbers=2)
    kwargs = dict(seeds=[0, 1], calls=6, params=SamplingParams(max_tokens=8), config=EvolveConfig.tiny())
    methods = ["mind-evolution", "best-of-n", "sequential-revision+"]
    serial = run_comparison(SeededFake(), task, instances, methods, **kwargs)
    parallel = run_comparison(SeededFake(delay=0.002), task, instances, methods, parallel_runs=5, **kwargs)
    drop = ("wall_seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in serial] == [
        {k: v for k, v in r.items() if k not in drop} for r in parallel
    ]


def test_an_ablation_keeps_its_own_row_label():
    from testtime.evolve import EvolveConfig
    from testtime.evolve.compare import run_comparison
    from testtime.llm.protocol import SamplingParams
    from testtime.tasks import get_task

    from .helpers import SeededFake

    task = get_task("countdown")
    instances = task.instances(seed=0, n=1, num_numbers=2)
    methods = ["mind-evolution", "mind-evolution:no-critic"]
    rows = run_comparison(
        SeededFake(), task, instances, methods, seeds=[0], calls=4, params=SamplingParams(max_tokens=8),
        config=EvolveConfig.tiny(),
    )  # fmt: skip
    assert [r["method"] for r in rows] == methods
    assert [s.method for s in summarize(rows)] == methods
