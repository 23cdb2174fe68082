"""Miniature reproduction of Mind Evolution's comparison (arXiv 2501.09891, Table 2 and Figure 3): Mind
Evolution, Best-of-N, Sequential-Revision+ and 1-Pass on the same generated instances at the same call
budget, with success rates and 95% Wilson intervals over (instance, seed) runs, the spread over seeds, the
paper's cost columns and success against budget.

By default it runs the embedded SmolLM2-135M on this machine; the same script runs any OpenAI-compatible
server (vLLM, llama.cpp's llama-server, `testtime serve`, a hosted API):

    python experiments/evolve_mini.py                                        # embedded model, small budget
    python experiments/evolve_mini.py --backend openai --base-url http://localhost:8000/v1 \
        --model Qwen/Qwen2.5-7B-Instruct --max-calls 800 --preset paper \
        --tasks "meeting-planning:num_people=5;trip-planning:num_cities=4" --num-instances 50

Writes OUT/runs.jsonl (one row per run), OUT/<task>.md tables, OUT/<task>.png plots and OUT/summary.md.
Each run logs under OUT/logs/, so an interrupted experiment resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def parse_tasks(text: str) -> list[tuple[str, dict[str, int]]]:
    out = []
    for item in text.split(";"):
        if not item.strip():
            continue
        name, _, knobs = item.partition(":")
        values = {}
        for pair in knobs.split(","):
            if pair.strip():
                key, _, value = pair.partition("=")
                values[key.strip()] = int(value)
        out.append((name.strip(), values))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="local", choices=["local", "openai"])
    parser.add_argument("--model", default=None)
    parser.add_argument("--base-url", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--tasks", default="countdown:num_numbers=3,max_number=20;arithmetic:digits=2,terms=2"
    )
    parser.add_argument("--methods", default="mind-evolution,best-of-n,sequential-revision+,one-pass")
    parser.add_argument("--num-instances", type=int, default=10)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--max-calls", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--parallel-runs", type=int, default=8, help="runs searched at once")
    parser.add_argument("--out", default="experiments/evolve_mini")
    args = parser.parse_args()

    from testtime.evolve.cli import make_llm
    from testtime.evolve.compare import plot_success, run_comparison, summarize, table
    from testtime.evolve.config import EvolveConfig
    from testtime.llm.protocol import SamplingParams
    from testtime.tasks import get_task

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    llm = make_llm(args.backend, args.model, base_url=args.base_url, threads=args.threads, concurrency=8)
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_new_tokens)
    config = EvolveConfig.preset(args.preset)
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m.strip() for m in args.methods.split(",")]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    all_rows, sections = [], []
    for name, knobs in parse_tasks(args.tasks):
        task = get_task(name)
        instances = task.instances(seed=0, n=args.num_instances, **knobs)
        start = time.perf_counter()

        def report(row: dict) -> None:
            print(
                f"{row['method']:22s} {row['instance']:10s} seed {row['seed']} solved {row['solved']!s:5s} "
                f"calls {row['calls']:3d} best {row['best_score']:.2f}",
                flush=True,
            )

        rows = run_comparison(
            llm,
            task,
            instances,
            methods,
            seeds=seeds,
            calls=args.max_calls,
            params=params,
            config=config,
            out_dir=out / name,
            on_run=report,
            parallel_runs=args.parallel_runs,
        )
        for row in rows:
            row.update(task=name, knobs=knobs)
        all_rows += rows
        text = table(summarize(rows))
        knob_text = ", ".join(f"{k}={v}" for k, v in knobs.items())
        title = (
            f"{name} ({knob_text}), {len(instances)} instances x {len(seeds)} seeds, {args.max_calls} calls"
        )
        (out / f"{name}.md").write_text(f"{title}\n\n{text}\n")
        plot_success(rows, out / f"{name}.png", calls=args.max_calls, title=title)
        minutes = (time.perf_counter() - start) / 60
        sections.append(f"### {title}\n\n{text}\n\n({minutes:.0f} min)\n")
        print(f"\n{title}\n{text}\n", flush=True)
    with open(out / "runs.jsonl", "w") as handle:
        for row in all_rows:
            handle.write(json.dumps(row) + "\n")
    header = (
        f"backend {args.backend}, model {args.model or 'embedded SmolLM2-135M'}, temperature "
        f"{args.temperature}, {args.max_new_tokens} tokens per answer, preset {args.preset}, seeds {seeds}, "
        f"load average at start {load}\n\n"
    )
    (out / "summary.md").write_text(header + "\n".join(sections))


if __name__ == "__main__":
    main()
