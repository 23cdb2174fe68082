"""``testtime evolve run | compare | lineage``: Mind Evolution and its baselines from the command line.

Sampling and run flags come from the shared vocabulary (:mod:`testtime.cli_options`); every count has a
range checked while the command line is parsed, so a bad value is one line and exit status 2 before any
model loads or any call is made.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from testtime import cli_options as opt
from testtime.errors import UserError

__all__ = ["register"]

evolve_app = typer.Typer(
    help="Mind Evolution (arXiv 2501.09891): evolutionary search over LLM answers, with its baselines.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_BACKEND_HELP = (
    "local: the model in this process (--model, default the embedded SmolLM2); openai: any OpenAI-compatible "
    "server (--base-url: testtime serve, vLLM, llama.cpp, a hosted API); fake: echoes the prompt (no model, "
    "to try the pipeline)."
)
_METHOD_HELP = "mind-evolution (or mind-evolution:ABLATION), best-of-n, sequential-revision+, one-pass."


def _parse_pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} takes KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _difficulty(items: list[str] | None) -> dict[str, int]:
    knobs = {}
    for key, value in _parse_pairs(items, "--difficulty").items():
        try:
            knobs[key] = int(value)
        except ValueError:
            raise UserError(f"--difficulty {key} needs an integer, got {value!r}") from None
    return knobs


def _config(preset: str, settings: list[str] | None) -> Any:
    from dataclasses import fields

    from testtime.evolve.config import EvolveConfig

    types = {f.name: f.type for f in fields(EvolveConfig)}
    changes: dict[str, Any] = {}
    for key, value in _parse_pairs(settings, "--set").items():
        if key not in types:
            raise UserError(f"--set: no setting {key!r}; settings: {', '.join(types)}")
        kind = str(types[key])
        try:
            if kind == "bool":
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                changes[key] = value.lower() in ("true", "1")
            elif kind == "int":
                changes[key] = int(value)
            elif kind == "float":
                changes[key] = float(value)
            else:
                changes[key] = value
        except ValueError:
            raise UserError(f"--set {key} needs a value of type {kind}, got {value!r}") from None
    return EvolveConfig.preset(preset, **changes)


def _params(max_new_tokens: int, temperature: float, top_p: float) -> Any:
    """The sampling parameters (their ranges are checked by the options)."""
    from testtime.llm.protocol import SamplingParams

    try:
        return SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_new_tokens)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def make_llm(
    backend: str, model: str | None, *, base_url: str | None, threads: int | None, concurrency: int
) -> Any:
    """The backend named on the command line."""
    _check_backend(backend, model)
    if backend == "local":
        from testtime.llm.local import LocalLLM

        return LocalLLM.from_name(model, num_threads=threads)
    if backend == "openai":
        from testtime.llm.openai_backend import OpenAILLM

        return OpenAILLM(model, base_url=base_url, max_concurrency=concurrency)
    if backend == "fake":
        from testtime.llm.fake import FakeLLM

        return FakeLLM(None, name="fake")
    raise AssertionError(backend)


def _check_backend(backend: str, model: str | None) -> None:
    """A bad --backend fails before any work (the backend itself is made last)."""
    if backend not in ("local", "openai", "fake"):
        raise UserError(f"--backend must be local, openai or fake, got {backend!r}")
    if backend == "openai" and not model:
        raise UserError("--backend openai needs --model (the server's model id)")


def _budget(max_calls: int | None, max_total_tokens: int | None, price_in: float, price_out: float) -> Any:
    from testtime.evolve.cost import Budget

    return Budget(
        max_calls=max_calls, max_tokens=max_total_tokens, price_input=price_in, price_output=price_out
    )


_MAX_INSTANCES = 10_000
_MAX_CALLS = 10**9  # a budget beyond any run (the paper's largest is 800 calls per problem)
_MAX_TOKENS = 10**13
_MAX_PARALLEL = 1024  # concurrent HTTP requests, or searches sharing the engine's batches


def _instances(task_name: str, split: str | None, seed: int, n: int, difficulty: list[str] | None) -> Any:
    from testtime.tasks import get_task

    task = get_task(task_name)
    instances = task.instances(split, seed=seed, n=n, **_difficulty(difficulty))
    if not instances:
        raise UserError(f"task {task_name!r} has no instances")
    return task, instances


# Options shared by run and compare.
_TASK = typer.Option(
    ..., "--task", help="A task of `testtime tasks list` (e.g. countdown, meeting-planning)."
)
_SPLIT = typer.Option(None, "--split", help="The task's split (default: its first).")
_DIFF = typer.Option(None, "--difficulty", "-d", help="A difficulty knob KEY=VALUE (repeatable).")
_BACKEND = typer.Option("local", "--backend", help=_BACKEND_HELP)
_MODEL = typer.Option(None, "--model", "-m", help="Model: local name/path, or the server's model id.")
_BASE_URL = typer.Option(
    None, "--base-url", help="OpenAI-compatible base URL (also $TESTTIME_OPENAI_BASE_URL / $OPENAI_BASE_URL)."
)
_PRESET = typer.Option(
    "paper", "--preset", help="Mind Evolution settings: paper (Table 1), gemini-pro, tiny."
)
_SET = typer.Option(
    None, "--set", help="Change one setting KEY=VALUE (repeatable), e.g. --set num_generations=3."
)
_BUDGET_CALLS = typer.Option(
    None, "--max-calls", min=1, max=_MAX_CALLS, help="Budget: the most LLM calls (never exceeded)."
)
_MAX_TOK = typer.Option(
    None, "--max-total-tokens", min=1, max=_MAX_TOKENS, help="Budget: the most input + output tokens."
)
_PRICE_IN = typer.Option(
    0.0, "--price-input", min=0, callback=opt.finite, help="Price per input token, for the cost column."
)
_PRICE_OUT = typer.Option(0.0, "--price-output", min=0, callback=opt.finite, help="Price per output token.")
_MAX_NEW = opt.max_new_tokens_option(256, "Most tokens per answer.")
_TEMP = opt.temperature_option(1.0)
_TOP_P = opt.top_p_option()
_THREADS = opt.threads_option()
_CONC = typer.Option(
    8, "--concurrency", min=1, max=_MAX_PARALLEL, help="Most parallel HTTP requests (openai backend)."
)
_NO_PROGRESS = opt.no_progress_option("No progress bar.")


@evolve_app.command("run")
def run_command(
    task_name: str = _TASK,
    seed: int = opt.seed_option(help_text="Seed of the instance and of the search."),
    split: str = _SPLIT,
    difficulty: list[str] = _DIFF,
    method: str = typer.Option("mind-evolution", "--method", help=_METHOD_HELP),
    backend: str = _BACKEND,
    model: str = _MODEL,
    base_url: str = _BASE_URL,
    preset: str = _PRESET,
    settings: list[str] = _SET,
    max_calls: int = _BUDGET_CALLS,
    max_total_tokens: int = _MAX_TOK,
    price_input: float = _PRICE_IN,
    price_output: float = _PRICE_OUT,
    max_new_tokens: int = _MAX_NEW,
    temperature: float = _TEMP,
    top_p: float = _TOP_P,
    threads: int = _THREADS,
    concurrency: int = _CONC,
    out: Path = typer.Option(
        Path("runs/evolve"), "--out", "-o", help="Run folder (an existing log resumes)."
    ),
    no_progress: bool = _NO_PROGRESS,
) -> None:
    """Search for a solution of one task instance; logs every candidate to OUT/log.jsonl (rerun to resume)."""
    from testtime.evolve import make_method, render_lineage, task_evaluator

    _check_backend(backend, model)
    config = _config(preset, settings)
    params = _params(max_new_tokens, temperature, top_p)
    budget = _budget(max_calls, max_total_tokens, price_input, price_output)
    search = make_method(method, calls=max_calls, config=config)
    task, (instance,) = _instances(task_name, split, seed, 1, difficulty)
    opt.run_folder(out)
    log_path = out / "log.jsonl"
    if log_path.exists() and not log_path.is_file():
        raise UserError(f"{log_path} is not a file")
    llm = make_llm(backend, model, base_url=base_url, threads=threads, concurrency=concurrency)
    if log_path.exists():
        typer.echo(f"resuming from {log_path}")
    bar = None
    if not no_progress:
        from tqdm import tqdm

        total = max_calls or getattr(getattr(search, "config", None), "max_candidates", None)
        bar = tqdm(total=total, unit="cand", desc=search.name)
    best = [0.0]

    def progress(candidate: Any) -> None:
        best[0] = max(best[0], candidate.score)
        if bar is not None:
            bar.update(candidate.attempts)
            bar.set_postfix(best=f"{best[0]:.2f}")

    start = time.perf_counter()
    result = search.run(
        llm,
        task.prompt(instance),
        task_evaluator(task, instance),
        seed=seed,
        budget=budget,
        params=params,
        log_path=str(log_path),
        on_candidate=progress,
    )
    if bar is not None:
        bar.close()
    summary = {"task": task_name, "instance": instance.id, **result.summary()}
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write(
            json.dumps({"time": time.time(), "seconds": time.perf_counter() - start, **summary}) + "\n"
        )
    typer.echo(json.dumps(summary))
    if result.best is not None:
        typer.echo(
            f"\nbest candidate {result.best.id} (score {result.best.score:.2f}, solved {result.best.solved}):"
        )
        typer.echo(result.best.answer[:2000])
        typer.echo(f"feedback: {result.best.feedback[:500]}")
        from testtime.evolve.log import read_log

        typer.echo("\nlineage:\n" + render_lineage(read_log(log_path), result.best.id))


@evolve_app.command("compare")
def compare_command(
    task_name: str = _TASK,
    methods: str = typer.Option(
        "mind-evolution,best-of-n,sequential-revision+,one-pass", "--methods", help="Comma-separated methods."
    ),
    num_instances: int = typer.Option(
        10, "--num-instances", min=1, max=_MAX_INSTANCES, help="Instances of the task."
    ),
    instance_seed: int = typer.Option(
        opt.SEED, "--instance-seed", min=0, max=opt.MAX_SEED, help="Seed of the instances."
    ),
    seeds: str = typer.Option("0", "--seeds", help="Comma-separated search seeds, e.g. 0,1,2."),
    split: str = _SPLIT,
    difficulty: list[str] = _DIFF,
    backend: str = _BACKEND,
    model: str = _MODEL,
    base_url: str = _BASE_URL,
    preset: str = _PRESET,
    settings: list[str] = _SET,
    max_calls: int = typer.Option(
        ..., "--max-calls", min=1, max=_MAX_CALLS, help="The call budget of every run (equal for all)."
    ),
    price_input: float = _PRICE_IN,
    price_output: float = _PRICE_OUT,
    max_new_tokens: int = _MAX_NEW,
    temperature: float = _TEMP,
    top_p: float = _TOP_P,
    threads: int = _THREADS,
    concurrency: int = _CONC,
    parallel_runs: int = typer.Option(
        4,
        "--parallel-runs",
        min=1,
        max=_MAX_PARALLEL,
        help="Runs searched at once (their calls share the engine's batches).",
    ),
    out: Path = typer.Option(Path("runs/evolve-compare"), "--out", "-o", help="Run folder (resumes)."),
    no_progress: bool = _NO_PROGRESS,
) -> None:
    """Every method on the same instances at the same call budget: a success and cost table (like the
    paper's Table 2) and a success-against-budget plot."""
    from testtime.evolve import METHODS
    from testtime.evolve.compare import plot_success, run_comparison, summarize, table, write_rows

    _check_backend(backend, model)
    names = [m.strip() for m in methods.split(",") if m.strip()]
    if not names:
        raise UserError("--methods needs at least one method")
    if len(set(names)) < len(names):
        raise UserError(f"--methods names a method twice: {methods!r}")
    for name in names:
        if name.partition(":")[0] not in (*METHODS, "sequential-revision"):
            raise UserError(f"unknown method {name!r}; methods: {', '.join(METHODS)}")
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds takes comma-separated integers, got {seeds!r}") from None
    if not seed_list:
        raise UserError("--seeds needs at least one seed")
    if any(not 0 <= s <= opt.MAX_SEED for s in seed_list):
        raise UserError(f"--seeds takes seeds in 0..{opt.MAX_SEED}, got {seeds!r}")
    if len(set(seed_list)) < len(seed_list):
        raise UserError(f"--seeds names a seed twice (runs would be counted twice): {seeds!r}")
    config = _config(preset, settings)
    params = _params(max_new_tokens, temperature, top_p)
    _budget(max_calls, None, price_input, price_output)  # validates the prices
    for name in names:  # validates ablation names before any work
        from testtime.evolve import make_method

        make_method(name, calls=max_calls, config=config)
    task, instances = _instances(task_name, split, instance_seed, num_instances, difficulty)
    opt.run_folder(out)
    llm = make_llm(backend, model, base_url=base_url, threads=threads, concurrency=concurrency)
    bar = None
    if not no_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(names) * len(instances) * len(seed_list), unit="run")
    rows = run_comparison(
        llm,
        task,
        instances,
        names,
        seeds=seed_list,
        calls=max_calls,
        params=params,
        config=config,
        out_dir=out,
        price_input=price_input,
        price_output=price_output,
        on_run=(lambda row: bar.update(1)) if bar is not None else None,
        parallel_runs=parallel_runs,
    )
    if bar is not None:
        bar.close()
    write_rows(rows, out / "runs.jsonl")
    summaries = summarize(rows)
    text = table(summaries, prices=bool(price_input or price_output))
    (out / "table.md").write_text(text + "\n")
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as handle:
        for s in summaries:
            handle.write(json.dumps({"time": time.time(), "task": task_name, **s.__dict__}) + "\n")
    figure = plot_success(
        rows, out / "success_vs_budget.png", calls=max_calls, title=f"{task_name}, {len(instances)} instances"
    )
    typer.echo(text)
    typer.echo(f"\nplot: {figure}; runs: {out / 'runs.jsonl'}")


@evolve_app.command("lineage")
def lineage_command(
    log: Path = typer.Argument(..., help="A run log (log.jsonl)."),
    candidate: str = typer.Option(None, "--id", help="The candidate (default: the best)."),
) -> None:
    """Print a candidate's lineage replayed from a run log."""
    from testtime.evolve.log import read_log, render_lineage

    if not log.is_file():
        raise UserError(f"no log file {log}")
    records = [r for r in read_log(log) if r.get("kind") == "candidate"]
    if not records:
        raise UserError(f"{log} has no candidates")
    if candidate is None:
        candidate = min(records, key=lambda r: (-r.get("score", 0), r.get("seq", 0)))["id"]
    typer.echo(render_lineage(records, candidate))


def register(app: typer.Typer) -> None:
    """Add the ``testtime evolve`` group."""
    app.add_typer(evolve_app, name="evolve")
