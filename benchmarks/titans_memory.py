"""Training throughput and peak memory of our Titans memory layer against titans-pytorch's ``NeuralMemory``.

Configuration (issue 5): model dim 384, 4 heads (head dim 96), chunk 64, memory MLP depth 2 with hidden
width 4 * 96 = 384 and GELU (titans-pytorch's default memory MLP), batch 2, fp32, CPU, sequence lengths
2,048 and 8,192. One step = forward + backward of ``out.square().mean()``; tokens/s = batch * length / step.

Three contenders:
- ``ours``: :class:`testtime.titans.memory.NeuralMemory`, the paper's semantics (per-token gates, gradients
  re-anchored at every chunk, per-token reads, q/k/v convolution, output norm and gate).
- ``theirs_matched``: titans-pytorch with ``batch_size = chunk_size = 64``: its weights are re-anchored at
  every chunk, the paper's eq. 16 semantics.
- ``theirs_default``: titans-pytorch in its default mode (``batch_size=None``: every chunk's gradient at the
  initial weights; cheaper, not the paper's recurrence).

Peak memory is the process's resident-set high-water mark (``getrusage(RUSAGE_SELF).ru_maxrss``) during
the measured steps minus the resident set just before them, each configuration in a FRESH subprocess, so
allocations of one contender never hide in another's peak. Python-level tracers (tracemalloc) do not see
torch's allocations and are not used.

Runs are interleaved (ours, theirs, theirs, ours, ... per repeat) and medians over repeats are reported,
because the machine is shared. The last line printed is one JSON object with ``speed_ratio`` (ours /
theirs_matched tokens/s at 8,192), ``memory_ratio`` (ours / theirs_matched peak at 8,192) and
``speed_ratio_vs_default`` (ours / theirs_default tokens/s at 8,192), plus every measurement.

Usage: python benchmarks/titans_memory.py [--repeats 3] [--lengths 2048 8192] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

DIM, HEADS, CHUNK, DEPTH, BATCH, EXPANSION = 384, 4, 64, 2, 2, 4.0
CONTENDERS = ("ours", "ours_stored", "theirs_matched", "theirs_default")


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def _build(name: str):
    import torch

    if name.startswith("ours"):
        from testtime.titans.config import MemoryConfig
        from testtime.titans.memory import NeuralMemory

        cfg = MemoryConfig(
            dim=DIM, num_heads=HEADS, depth=DEPTH, expansion=EXPANSION, chunk_size=CHUNK, activation="gelu",
            checkpoint_every=0 if name == "ours_stored" else None,
        )  # fmt: skip
        module = NeuralMemory(cfg)
        return module, lambda x: module(x)[0]
    from titans_pytorch import NeuralMemory as TheirMemory

    kwargs = dict(dim=DIM, chunk_size=CHUNK, heads=HEADS, dim_head=DIM // HEADS)
    if name == "theirs_matched":
        kwargs["batch_size"] = CHUNK
    module = TheirMemory(**kwargs)
    del torch
    return module, lambda x: module(x)[0]


def worker(name: str, length: int, steps: int, threads: int) -> dict:
    """One configuration in this (fresh) process: a warm-up step, then ``steps`` timed steps."""
    import resource

    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    module, fn = _build(name)
    x = torch.randn(BATCH, length, DIM)
    fn(x[:, : 2 * CHUNK]).square().mean().backward()  # warm-up at a short length: lazy init, kernels
    module.zero_grad(set_to_none=True)
    base = _rss_kib()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn(x).square().mean().backward()
        times.append(time.perf_counter() - start)
        module.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    step = statistics.median(times)
    return {
        "name": name,
        "length": length,
        "step_s": step,
        "tokens_per_s": BATCH * length / step,
        "peak_mib": max(0, peak - base) / 1024,
        "threads": torch.get_num_threads(),
    }


def _run(name: str, length: int, steps: int, threads: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", name, "--lengths", str(length), "--steps", str(steps)]
        + ["--threads", str(threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (medians are reported)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192], help="sequence lengths")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per process (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    parser.add_argument("--only", nargs="+", choices=CONTENDERS, default=list(CONTENDERS), help="contenders")
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.lengths[0], args.steps, args.threads)))
        return

    import torch

    results: dict[tuple[str, int], list[dict]] = {}
    for rep in range(args.repeats):
        order = args.only if rep % 2 == 0 else list(reversed(args.only))
        for length in args.lengths:
            for name in order:
                res = _run(name, length, args.steps, args.threads)
                results.setdefault((name, length), []).append(res)
                print(
                    f"rep {rep} {name:15s} n={length:5d} {res['tokens_per_s']:9.0f} tok/s "
                    f"peak {res['peak_mib']:8.1f} MiB",
                    flush=True,
                )
    table = {}
    for (name, length), runs in results.items():
        table[f"{name}@{length}"] = {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
            "peak_mib": statistics.median(r["peak_mib"] for r in runs),
            "runs": len(runs),
            "all_tokens_per_s": [round(r["tokens_per_s"], 1) for r in runs],
        }
    print("\n| contender | length | tokens/s (median) | peak MiB (median) |\n|---|---|---|---|")
    for key, row in table.items():
        name, length = key.split("@")
        print(f"| {name} | {length} | {row['tokens_per_s']:.0f} | {row['peak_mib']:.0f} |")
    longest = max(args.lengths)
    ours, matched, default = (table[f"{n}@{longest}"] for n in ("ours", "theirs_matched", "theirs_default"))
    summary = {
        "speed_ratio": ours["tokens_per_s"] / matched["tokens_per_s"],
        "memory_ratio": ours["peak_mib"] / matched["peak_mib"],
        "speed_ratio_vs_default": ours["tokens_per_s"] / default["tokens_per_s"],
        "memory_ratio_vs_default": ours["peak_mib"] / default["peak_mib"],
        "length": longest,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "threads": sorted({r["threads"] for runs in results.values() for r in runs}),
        "memory_measure": "ru_maxrss high-water minus RSS before the timed steps, fresh process per run",
        "results": table,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
