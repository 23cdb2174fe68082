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


def candidate_stats(task_dir: Path) -> str:
    """Per method, over every logged candidate of a task (read back from OUT/<task>/logs): how many, how many
    solved, the mean score, how many answers carry the author's marker (RCC prompts ask for it) and how many
    hit the token limit. Candidate-level rates say more than run-level success when runs are few."""
    from testtime.evolve.log import read_log

    lines = [
        "| method | candidates | solved candidates | mean score | with marker | at the token limit |",
        "|---|---|---|---|---|---|",
    ]
    for folder in sorted(p for p in (task_dir / "logs").iterdir() if p.is_dir()):
        records, limit = [], None
        for log in sorted(folder.glob("*.jsonl")):
            rows = read_log(log)
            limit = rows[0]["sampling"]["max_tokens"] if rows else limit
            records += [r for r in rows[1:] if r.get("kind") == "candidate"]
        if not records:
            continue
        n = len(records)
        solved = sum(bool(r["solved"]) for r in records)
        score = sum(float(r["score"]) for r in records) / n
        marker = sum("PROPOSED SOLUTION:" in r.get("text", "") for r in records)
        capped = sum(r.get("output_tokens", 0) >= (limit or 1 << 30) for r in records)
        lines.append(
            f"| {folder.name} | {n} | {solved} ({solved / n:.1%}) | {score:.3f} | {marker / n:.0%} | "
            f"{capped / n:.0%} |"
        )
    return "\n".join(lines)


def merge_rows(path: Path, rows: list[dict]) -> list[dict]:
    """The rows of ``path`` (if any) with ``rows`` replacing those of the same (task, method, instance,
    seed); new rows last."""

    def key(row: dict) -> tuple:
        return row["task"], row["method"], row["instance"], row["seed"]

    old = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    fresh = {key(r) for r in rows}
    return [r for r in old if key(r) not in fresh] + list(rows)


def write_report(out: Path, name: str, rows: list[dict], calls: int) -> str:
    """OUT/<name>.md (the success and cost table, then every candidate's statistics) and OUT/<name>.png
    (success against budget) for one task's rows; returns the markdown."""
    from testtime.evolve.compare import plot_success, summarize, table

    knobs = rows[0].get("knobs", {})
    instances = len({r["instance"] for r in rows})
    seeds = len({r["seed"] for r in rows})
    knob_text = ", ".join(f"{k}={v}" for k, v in knobs.items())
    title = f"{name} ({knob_text}), {instances} instances x {seeds} seeds, {calls} calls"
    text = f"{title}\n\n{table(summarize(rows))}\n\nEvery candidate:\n\n{candidate_stats(out / name)}"
    (out / f"{name}.md").write_text(text + "\n")
    plot_success(rows, out / f"{name}.png", calls=calls, title=title)
    return text


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
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild OUT/<task>.md and .png from OUT/runs.jsonl and the logs (no model)",
    )
    args = parser.parse_args()
    if args.report_only:
        rows = [json.loads(line) for line in (Path(args.out) / "runs.jsonl").read_text().splitlines()]
        for name, _ in parse_tasks(args.tasks):
            mine = [r for r in rows if r["task"] == name]
            if mine:
                print(write_report(Path(args.out), name, mine, args.max_calls))
        return

    from testtime.evolve.cli import make_llm
    from testtime.evolve.compare import run_comparison
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
        # merged with the rows of earlier invocations (other methods, seeds or instances) in OUT/runs.jsonl
        all_rows = merge_rows(out / "runs.jsonl", rows)
        text = write_report(out, name, [r for r in all_rows if r["task"] == name], args.max_calls)
        minutes = (time.perf_counter() - start) / 60
        with open(out / f"{name}.md", "a") as handle:
            handle.write(f"\n({minutes:.0f} min for {', '.join(methods)}; load average {load})\n")
        print(f"\n{text}\n", flush=True)
        # written after every task, so a long experiment cut short keeps what it finished
        with open(out / "runs.jsonl", "w") as handle:
            for row in all_rows:
                handle.write(json.dumps(row) + "\n")
        header = (
            f"backend {args.backend}, model {args.model or 'embedded SmolLM2-135M'}, temperature "
            f"{args.temperature}, {args.max_new_tokens} tokens per answer, preset {args.preset} (the last "
            f"invocation's settings; each task's title gives its instances, seeds and call budget)\n\n"
        )
        tasks = dict.fromkeys(r["task"] for r in all_rows)
        sections = [
            f"### {(out / f'{task}.md').read_text()}" for task in tasks if (out / f"{task}.md").exists()
        ]
        (out / "summary.md").write_text(header + "\n".join(sections))


if __name__ == "__main__":
    main()
