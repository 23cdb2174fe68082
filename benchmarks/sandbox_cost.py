"""Seconds per sandboxed check: bubblewrap against the fallback (resource limits + audit hook), same run.

Each HumanEval canonical solution is verified in both modes, interleaved (bwrap, fallback, bwrap, ...),
after one warm-up check each; an empty program (``pass``) is timed the same way. Every check must pass in
both modes. Medians are reported; on a loaded machine the spread is wide, so read the ratio, not the
seconds.

Usage::

    python benchmarks/sandbox_cost.py [--n 164] [--empty 20]

The last line printed is one JSON object with ``check_ratio`` (bwrap / fallback median seconds per
HumanEval check) and ``empty_ratio`` (the same for an empty program).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

from testtime.tasks.humaneval import HumanEval
from testtime.tasks.sandbox import _bwrap_works, run_python

MODES = ("bwrap", "fallback")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--n", type=int, default=164, help="HumanEval problems (the first n of seed 0's order)"
    )
    parser.add_argument("--empty", type=int, default=20, help="empty-program runs per mode")
    args = parser.parse_args()
    if not _bwrap_works():
        raise SystemExit("bubblewrap (bwrap) does not work here: nothing to compare")
    task = HumanEval()
    instances = task.instances(seed=0, n=max(1, min(args.n, 164)))
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    empty: dict[str, list[float]] = {mode: [] for mode in MODES}
    failed: list[str] = []
    for mode in MODES:  # warm-up
        os.environ["TESTTIME_SANDBOX"] = mode
        task.verify(instances[0], instances[0].reference)
        run_python("pass", isolation=mode)
    total = {mode: 0.0 for mode in MODES}
    for instance in instances:
        for mode in MODES:
            os.environ["TESTTIME_SANDBOX"] = mode
            start = time.perf_counter()
            verdict = task.verify(instance, instance.reference)
            took = time.perf_counter() - start
            seconds[mode].append(took)
            total[mode] += took
            if not verdict.solved:
                failed.append(f"{instance.id} ({mode})")
    for _ in range(args.empty):
        for mode in MODES:
            start = time.perf_counter()
            assert run_python("pass", isolation=mode).status == "passed"
            empty[mode].append(time.perf_counter() - start)
    check = {mode: statistics.median(seconds[mode]) for mode in MODES}
    blank = {mode: statistics.median(empty[mode]) for mode in MODES}
    for mode in MODES:
        print(
            f"{mode:8}  check median {check[mode]:.3f} s  empty median {blank[mode]:.3f} s  "
            f"{len(instances)} checks {total[mode]:.1f} s"
        )
    if failed:
        print("failed:", ", ".join(failed))
    print(
        json.dumps(
            {
                "check_ratio": round(check["bwrap"] / check["fallback"], 3),
                "empty_ratio": round(blank["bwrap"] / blank["fallback"], 3),
                "check_seconds": {m: round(v, 4) for m, v in check.items()},
                "empty_seconds": {m: round(v, 4) for m, v in blank.items()},
                "total_seconds": {m: round(v, 1) for m, v in total.items()},
                "checks": len(instances),
                "failed": failed,
                "load_average": os.getloadavg()[0],
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
            }
        )
    )


if __name__ == "__main__":
    main()
