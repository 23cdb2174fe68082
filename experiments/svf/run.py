"""A miniature Transformer² reproduction on the embedded SmolLM2-135M-Instruct (CPU, minutes per phase).

Phases (each writes ``experiments/svf/results/<phase>.json``; a finished phase is skipped on rerun unless
``--force``):

- ``experts``: an SVF expert per task family and seed by REINFORCE (MLP z vectors, raw parameterization),
  the next-token-prediction SVF ablation and the LoRA r=16 (q, v) baseline on seed 0, same loop;
- ``matrix``: test accuracy of the base model and of every expert on every task (the expert-by-task matrix),
  with Wilson 95% intervals;
- ``classifier``: strategy B's classification expert, trained on *training-split* questions of the tasks;
- ``adapt``: an unseen task (ARC-Challenge, cloze) and the mixture of the expert tasks' test questions,
  adapted by A (prompt), B (classifier) and C (few-shot CEM, k shots, reported on n − k) against the base
  model and LoRA.

Usage::

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python experiments/svf/run.py --phases experts matrix classifier adapt

``--bundle`` copies the ARC-Easy seed-0 expert to ``src/testtime/svf/bundled/arc_easy.safetensors`` (the demo's).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from testtime.llm.loading import load_model
from testtime.llm.local import LocalLLM
from testtime.svf.evaluate import evaluate_strategies
from testtime.svf.experts import expert_from_svf, load_expert, save_expert
from testtime.svf.reinforce import LoRAPolicy, ReinforceConfig, SVFPolicy, make_env, num_trainable, train
from testtime.svf.svf import SVF, SVFConfig
from testtime.tasks import get_task

HERE = Path(__file__).parent
RESULTS = HERE / "results"
EXPERTS = HERE / "experts"
BUNDLE = HERE.parent.parent / "src" / "testtime" / "svf" / "bundled" / "arc_easy.safetensors"

# name -> (task, knobs, env mode, max new tokens)
TASKS: dict[str, tuple[str, dict[str, int], str, int]] = {
    "arc-easy": ("arc-easy", {}, "cloze", 8),
    "arithmetic": ("arithmetic", {"digits": 1, "terms": 2}, "generate", 40),
    "countdown": ("countdown", {"num_numbers": 2, "max_number": 20}, "generate", 48),
    "reading": ("reading", {"people": 3, "facts": 1}, "generate", 24),
}
UNSEEN = ("arc-challenge", {}, "cloze", 8)


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(centre - half, 3), round(centre + half, 3))


TAG = {"value": ""}  # results file suffix (--tag), so that runs with other seeds do not overwrite


def _save(phase: str, data: Any) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{phase}{TAG['value']}.json").write_text(json.dumps(data, indent=2) + "\n")


def _done(phase: str, force: bool) -> bool:
    return (RESULTS / f"{phase}{TAG['value']}.json").is_file() and not force


def _instances(name: str, split: str, n: int, seed: int):
    task_name, knobs, _, _ = TASKS.get(name, UNSEEN)
    task = get_task(task_name)
    return task, task.instances(split, seed=seed, n=n, **knobs)


def _env(name: str):
    task_name, _, mode, tokens = TASKS.get(name, UNSEEN)
    return make_env(get_task(task_name), mode=mode, max_new_tokens=tokens)


def _config(
    args: argparse.Namespace, seed: int, *, lora: bool = False, objective: str = "reinforce"
) -> ReinforceConfig:
    return ReinforceConfig(
        objective=objective,  # type: ignore[arg-type]
        lr=args.lora_lr if lora else args.lr,
        max_grad_norm=args.max_grad_norm,
        kl_coef=args.kl_coef,
        batch_size=args.batch_size,
        num_samples=args.num_samples,
        baseline="group" if args.num_samples > 1 else "none",
        temperature=1.0,
        max_steps=args.steps,
        eval_every=args.eval_every,
        patience=args.patience,
        val_fraction=args.val_fraction,
        seed=seed,
    )


def _log(record: dict[str, Any]) -> None:
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}), flush=True)


def phase_experts(args: argparse.Namespace, model: Any, tokenizer: Any, llm: LocalLLM, svf: SVF) -> None:
    policy = SVFPolicy(svf, tokenizer, llm)
    out: dict[str, Any] = {"config": vars(args), "runs": []}
    EXPERTS.mkdir(parents=True, exist_ok=True)
    jobs = [(name, seed, "svf") for seed in args.seeds for name in TASKS]
    jobs += [(name, args.seeds[0], "ntp") for name in args.ntp_tasks]
    jobs += [(name, args.seeds[0], "lora") for name in args.lora_tasks]
    for name, seed, method in jobs:
        path = EXPERTS / (
            f"{name}-lora-seed{seed}" if method == "lora" else f"{name}-{method}-seed{seed}.safetensors"
        )
        if args.reuse and path.exists():
            print(json.dumps({"task": name, "seed": seed, "method": method, "reused": str(path)}), flush=True)
            continue
        task, items = _instances(name, "train", args.num_train, seed)
        env = _env(name)
        start = time.perf_counter()
        if method == "lora":
            fresh, _ = load_model()
            lora = LoRAPolicy(fresh, tokenizer, rank=16, targets=("q_proj", "v_proj"), num_threads=1)
            result = train(lora, env, items, _config(args, seed, lora=True), log=_log)
            path = EXPERTS / f"{name}-lora-seed{seed}"
            lora.model.save_pretrained(path)
            params = num_trainable(lora)
        else:
            svf.reset()
            objective = "ntp" if method == "ntp" else "reinforce"
            result = train(policy, env, items, _config(args, seed, objective=objective), log=_log)
            metrics = {"base_val": result.base_val, "best_val": result.best_val, "steps": result.steps}
            expert = expert_from_svf(svf, base_model="smollm2", task=name, method=objective, metrics=metrics)
            path = save_expert(expert, EXPERTS / f"{name}-{method}-seed{seed}.safetensors")
            params = svf.num_trainable()
            svf.reset()
            svf.restore(llm)
        run = {
            "task": name, "seed": seed, "method": method, "base_val": result.base_val, "best_val": result.best_val,
            "steps": result.steps, "seconds": round(time.perf_counter() - start, 1), "params": params, "path": str(path),
            "train_curve": [h for h in result.history if "val_accuracy" in h],
        }  # fmt: skip
        print(json.dumps({k: v for k, v in run.items() if k != "train_curve"}), flush=True)
        out["runs"].append(run)
        _save("experts", out)


def _accuracy_row(policy: SVFPolicy, name: str, items: list[Any]) -> dict[str, Any]:
    env = _env(name)
    accuracy = env.evaluate(policy, items)
    return {"accuracy": accuracy, "n": len(items), "ci95": wilson(accuracy * len(items), len(items))}


def _measured(args: argparse.Namespace) -> set[tuple[str, Any, str]]:
    """(expert, seed, task) cells that earlier matrix runs measured with this many test questions
    (``--reuse``: those are not measured again)."""
    if not args.reuse:
        return set()
    rows = [row for data in _load_all("matrix") for row in data["rows"]]
    return {(r["expert"], r.get("seed"), r["task"]) for r in rows if r["n"] == args.num_eval}


def phase_matrix(args: argparse.Namespace, model: Any, tokenizer: Any, llm: LocalLLM, svf: SVF) -> None:
    policy = SVFPolicy(svf, tokenizer, llm)
    own = RESULTS / f"matrix{TAG['value']}.json"
    rows = json.loads(own.read_text())["rows"] if args.reuse and own.is_file() else []  # resume this tag
    done = _measured(args)
    test = {name: _instances(name, "test", args.num_eval, 1000)[1] for name in TASKS}
    svf.reset()
    for name, items in test.items() if not args.no_base else ():
        if ("base", None, name) in done:
            continue
        rows.append({"expert": "base", "task": name, **_accuracy_row(policy, name, items)})
        print(json.dumps(rows[-1]), flush=True)
        _save("matrix", {"rows": rows})
    for seed in args.seeds:
        for expert_name in TASKS:
            todo = [name for name in test if (expert_name, seed, name) not in done]
            if not todo:
                continue
            expert = load_expert(EXPERTS / f"{expert_name}-svf-seed{seed}.safetensors")
            expert.apply(svf)
            for name in todo:
                items = test[name]
                rows.append(
                    {"expert": expert_name, "seed": seed, "task": name, **_accuracy_row(policy, name, items)}
                )
                print(json.dumps(rows[-1]), flush=True)
                _save("matrix", {"rows": rows})
            svf.reset()
    for expert_name in args.ntp_tasks:
        load_expert(EXPERTS / f"{expert_name}-ntp-seed{args.seeds[0]}.safetensors").apply(svf)
        rows.append(
            {
                "expert": f"{expert_name} (ntp)",
                "task": expert_name,
                **_accuracy_row(policy, expert_name, test[expert_name]),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        svf.reset()
    svf.restore(llm)
    for name in args.lora_tasks:
        from peft import PeftModel

        fresh, _ = load_model()
        peft_model = PeftModel.from_pretrained(fresh, EXPERTS / f"{name}-lora-seed{args.seeds[0]}").eval()
        lora_policy = _FrozenPolicy(peft_model, tokenizer)
        env = _env(name)
        accuracy = env.evaluate(lora_policy, test[name])
        rows.append({"expert": f"{name} (lora)", "task": name, "accuracy": accuracy, "n": len(test[name]),
                     "ci95": wilson(accuracy * len(test[name]), len(test[name]))})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    _save("matrix", {"rows": rows})


def _lora_policy(args: argparse.Namespace, tokenizer: Any) -> tuple[str, Any] | None:
    """The first LoRA baseline adapter (seed 0) as an evaluation policy, or None when none was trained."""
    for name in args.lora_tasks:
        path = EXPERTS / f"{name}-lora-seed{args.seeds[0]}"
        if path.is_dir():
            from peft import PeftModel

            fresh, _ = load_model()
            return name, _FrozenPolicy(PeftModel.from_pretrained(fresh, path).eval(), tokenizer)
    return None


class _FrozenPolicy:
    """A trained PEFT model behind the evaluation interface."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.llm = LocalLLM(model, tokenizer, num_threads=1)

    def sync_for_sampling(self) -> None:
        pass

    def training(self):
        import contextlib

        return contextlib.nullcontext(self.model)


def _classifier_path(seed: int) -> Path:
    """Strategy B's classification expert for these expert categories and this seed. (Session 2's
    two-category classifier was ``experts/classifier.safetensors``; it is never read now.)"""
    return EXPERTS / f"classifier-{'+'.join(TASKS)}-seed{seed}.safetensors"


def _load_classifier(seed: int) -> Any:
    """The classification expert of :func:`_classifier_path`, or None when none was trained; one trained on
    other categories (or in another order) is an error, not a silent first pass over the wrong names."""
    path = _classifier_path(seed)
    if not path.is_file():
        print(
            json.dumps({"classifier": None, "missing": str(path), "note": "strategy B skipped"}), flush=True
        )
        return None
    classifier = load_expert(path)
    if classifier.metrics.get("categories") != list(TASKS):
        raise SystemExit(f"{path} was trained on {classifier.metrics.get('categories')}, not {list(TASKS)}")
    return classifier


def phase_classifier(args: argparse.Namespace, model: Any, tokenizer: Any, llm: LocalLLM, svf: SVF) -> None:
    from testtime.svf.adapt import classification_task
    from testtime.svf.reinforce import ClozeEnv

    policy = SVFPolicy(svf, tokenizer, llm)
    questions = {}
    for name in TASKS:
        task, items = _instances(name, "train", args.num_cls, 7)
        questions[name] = [task.prompt(i) for i in items]
    cls_task, cls_items = classification_task(questions)
    svf.reset()
    seed = args.seeds[0]
    config = _config(args, seed)
    result = train(policy, ClozeEnv(cls_task), cls_items, config)
    metrics = {
        "base_val": result.base_val,
        "best_val": result.best_val,
        "categories": list(TASKS),
        "seed": seed,
    }
    expert = expert_from_svf(
        svf, base_model="smollm2", task="classifier", method="reinforce", metrics=metrics
    )
    path = save_expert(expert, _classifier_path(seed))
    svf.reset()
    svf.restore(llm)
    out = {"base_val": result.base_val, "best_val": result.best_val, "steps": result.steps,
           "categories": list(TASKS), "num_per_category": args.num_cls, "seed": seed, "path": str(path)}  # fmt: skip
    print(json.dumps(out), flush=True)
    _save("classifier", out)


def phase_adapt(args: argparse.Namespace, model: Any, tokenizer: Any, llm: LocalLLM, svf: SVF) -> None:
    policy = SVFPolicy(svf, tokenizer, llm)
    seed = args.seeds[0]
    experts = [load_expert(EXPERTS / f"{name}-svf-seed{seed}.safetensors") for name in TASKS]
    classifier = _load_classifier(seed)
    with_b = ["classifier"] if classifier is not None else []
    out: dict[str, Any] = {
        "config": {"seed": seed, "experts": list(TASKS), "num_adapt": args.num_adapt, "shots": args.shots,
                   "population": args.population, "generations": args.generations,
                   "classifier": str(_classifier_path(seed)) if classifier is not None else None},
        "rows": [],
    }  # fmt: skip
    targets = [("arc-challenge", ["prompt", *with_b, "few-shot"])]
    targets += [(name, ["prompt", *with_b]) for name in TASKS]
    if args.adapt_targets:
        targets = [t for t in targets if t[0] in args.adapt_targets]
    lora = _lora_policy(args, tokenizer)
    for name, strategies in targets:
        task, items = _instances(name, "test", args.num_adapt, 2000)
        _, _, mode, tokens = TASKS.get(name, UNSEEN)
        rows = evaluate_strategies(
            model, tokenizer, task, items, experts, strategies=strategies, classifier=classifier, env_mode=mode,
            shots=args.shots, per_layer=False, population=args.population, generations=args.generations,
            max_new_tokens=tokens, seed=seed, policy=policy,
        )  # fmt: skip
        if lora is not None:
            accuracy = _env(name).evaluate(lora[1], items)
            rows.append({"strategy": f"LoRA ({lora[0]})", "accuracy": accuracy, "n": len(items), "note": ""})
        for row in rows:
            row["task"] = name
            row["ci95"] = wilson(row["accuracy"] * row["n"], row["n"])
            print(json.dumps(row), flush=True)
        out["rows"] += rows
        _save("adapt", out)


def _load_all(phase: str) -> list[dict[str, Any]]:
    """Every results file of a phase (all tags), oldest name first."""
    return [data for _, data in _load_named(phase)]


def _load_named(phase: str) -> list[tuple[str, dict[str, Any]]]:
    """``(file stem, contents)`` of every results file of a phase, untagged first."""
    paths = sorted(RESULTS.glob(f"{phase}*.json"), key=lambda p: (p.stem != phase, p.name))
    return [(p.stem, json.loads(p.read_text())) for p in paths]


# session 2's adapt.json predates the "config" entry; it adapted with these two experts, seed 0
_LEGACY_ADAPT = {"seed": 0, "experts": ["arc-easy", "arithmetic"]}


def _mixture(rows: list[dict[str, Any]], experts: list[str]) -> dict[str, list[float]]:
    """Per strategy, [solved, n] over the expert tasks' rows (each question was routed on its own)."""
    mix: dict[str, list[float]] = {}
    for r in rows:
        if r["task"] in experts:
            solved_n = mix.setdefault(r["strategy"], [0.0, 0.0])
            solved_n[0] += r["accuracy"] * r["n"]
            solved_n[1] += r["n"]
    return mix


def _mixture_lines(mix: dict[str, list[float]], experts: list[str], rows: list[dict[str, Any]]) -> list[str]:
    if len(experts) < 2 or not mix or not set(experts) <= {r["task"] for r in rows}:  # every expert task
        return []
    lines = ["", f"Mixture of the expert tasks' test questions ({', '.join(experts)}; each question routed on "
             "its own):", "", "| strategy | accuracy | n |", "|---|---|---|"]  # fmt: skip
    for strategy, (solved, n) in mix.items():
        lines.append(f"| {strategy} | {_fmt({'accuracy': solved / n, 'n': int(n)})} | {int(n)} |")
    return lines


def _adapt_summary() -> list[str]:
    """One adaptation table (and its mixture of the expert tasks) per results file, then, per set of experts
    run with several seeds, the rows pooled over the seeds."""
    lines: list[str] = []
    groups: dict[tuple[tuple[str, ...], Any, tuple[str, ...]], list[tuple[int, list[dict[str, Any]]]]] = {}
    named = _load_named("adapt")  # session 2's first, then by questions per target and seed
    named.sort(
        key=lambda f: (
            "config" in f[1],
            f[1].get("config", {}).get("num_adapt", 0),
            f[1].get("config", {}).get("seed", 0),
        )
    )
    for stem, data in named:
        config = data.get("config", _LEGACY_ADAPT)
        experts, seed = list(config["experts"]), config["seed"]
        rows = data["rows"]
        lines += [f"## Two-pass adaptation: `{stem}.json` (experts {', '.join(experts)}; seed {seed})", "",
                  "| task | strategy | accuracy | n | note |", "|---|---|---|---|---|"]  # fmt: skip
        for r in rows:
            lines.append(f"| {r['task']} | {r['strategy']} | {_fmt(r)} | {r['n']} | {r.get('note', '')} |")
        lines += _mixture_lines(_mixture(rows, experts), experts, rows)
        lines.append("")
        targets = tuple(dict.fromkeys(r["task"] for r in rows))  # runs with --adapt-targets pool apart
        groups.setdefault((tuple(experts), config.get("num_adapt"), targets), []).append((seed, rows))
    for (experts_key, num_adapt, _), runs in groups.items():
        if len(runs) < 2:
            continue
        experts = list(experts_key)
        seeds = [seed for seed, _ in runs]
        lines += [f"## Two-pass adaptation pooled over seeds {', '.join(map(str, seeds))} "
                  f"(experts {', '.join(experts)}; {num_adapt} questions per target and seed)", "",
                  "The same test questions in every seed: the pooled interval counts each (seed, question) "
                  "once, so it covers the seeds' spread, not a larger question sample.", "",
                  "| task | strategy | per seed | pooled | n |", "|---|---|---|---|---|"]  # fmt: skip
        pooled: dict[tuple[str, str], list[Any]] = {}
        for _, rows in runs:
            for r in rows:
                entry = pooled.setdefault((r["task"], r["strategy"]), [0.0, 0, []])
                entry[0] += r["accuracy"] * r["n"]
                entry[1] += r["n"]
                entry[2].append(f"{r['accuracy']:.2f}")
                if "base_same" in r:
                    same = pooled.setdefault((r["task"], "base (on C's n - k)"), [0.0, 0, []])
                    same[0] += r["base_same"] * r["n"]
                    same[1] += r["n"]
                    same[2].append(f"{r['base_same']:.2f}")
        for (task, strategy), (solved, n, each) in pooled.items():
            row = {"accuracy": solved / n, "n": n}
            lines.append(f"| {task} | {strategy} | {', '.join(each)} | {_fmt(row)} | {n} |")
        every = [r for _, rows in runs for r in rows]
        lines += _mixture_lines(_mixture(every, experts), experts, every)
        lines.append("")
    return lines


def newcombe(p1: float, p2: float, n1: int, n2: int) -> tuple[float, float]:
    """Newcombe's 95% interval for the difference p1 - p2 of two proportions (hybrid Wilson; unpaired, so
    conservative for two models on the same questions)."""
    l1, u1 = wilson(p1 * n1, n1)
    l2, u2 = wilson(p2 * n2, n2)
    d = p1 - p2
    return (round(d - math.hypot(p1 - l1, u2 - p2), 3), round(d + math.hypot(u1 - p1, p2 - l2), 3))


def _fmt(row: dict[str, Any]) -> str:
    lo, hi = row.get("ci95") or wilson(row["accuracy"] * row["n"], row["n"])
    return f"{row['accuracy']:.2f} [{lo:.2f}, {hi:.2f}]"


def phase_summary(args: argparse.Namespace, *_: Any) -> None:
    """``results/summary.md``: the experts, the expert-by-task matrix and the adaptation table, from the JSONs."""
    lines = ["# Results (written by `run.py --phases summary`; 95% Wilson intervals in brackets)", ""]
    runs = [(stem, r) for stem, data in _load_named("experts") for r in data["runs"]]
    if runs:
        lines += ["## Experts", "", "(`experts-3experts*.json`: the adaptation experts, retrained after commit 79e146b; "
                  "the others: the matrix's, trained before it)", "",
                  "| task | method | seed | val before | best val | steps | seconds | params | file |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for stem, r in runs:
            val = " | ".join("-" if math.isnan(v) else f"{v:.2f}" for v in (r["base_val"], r["best_val"]))
            lines.append(f"| {r['task']} | {r['method']} | {r['seed']} | {val} "
                         f"| {r['steps']} | {r['seconds']:.0f} | {r['params']:,} | {stem} |")  # fmt: skip
        lines.append("")
    all_rows = [row for data in _load_all("matrix") for row in data["rows"]]
    for size in sorted({r["n"] for r in all_rows}):  # one table per test-set size
        rows = [r for r in all_rows if r["n"] == size]
        tasks = list(dict.fromkeys(r["task"] for r in rows))
        lines += [f"## Expert-by-task matrix (test accuracy, {size} test questions per cell)", "",
                  "| expert | seed | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]  # fmt: skip
        keyed: dict[tuple[str, str], dict[str, str]] = {}
        for r in rows:
            seed = str(r.get("seed", "-"))
            keyed.setdefault((r["expert"], seed), {})[r["task"]] = _fmt(r)
        first = {key: i for i, key in enumerate(keyed)}
        order = sorted(
            keyed, key=lambda k: (k[0] != "base", "(" in k[0], k[1], first[k])
        )  # base, experts, ablations
        for expert, seed in order:
            cells = keyed[(expert, seed)]
            lines.append(f"| {expert} | {seed} | " + " | ".join(cells.get(t, "") for t in tasks) + " |")
        by_expert: dict[str, dict[str, list[float]]] = {}
        for r in rows:
            if "seed" in r:
                by_expert.setdefault(r["expert"], {}).setdefault(r["task"], []).append(r["accuracy"])
        if by_expert:
            lines += ["", "Mean over seeds (min-max):", "", "| expert | " + " | ".join(tasks) + " |",
                      "|---|" + "---|" * len(tasks)]  # fmt: skip
            for expert, cells in by_expert.items():
                shown = [
                    f"{sum(v) / len(v):.2f} ({min(v):.2f}-{max(v):.2f}, {len(v)} seeds)" if v else ""
                    for v in (cells.get(t, []) for t in tasks)
                ]
                lines.append(f"| {expert} | " + " | ".join(shown) + " |")
        base = {r["task"]: r for r in rows if r["expert"] == "base"}
        if base and by_expert:
            lines += ["", "Difference from the base model (Newcombe 95% interval):", "",
                      "| expert | seed | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]  # fmt: skip
            diffs: dict[tuple[str, str], dict[str, str]] = {}
            for r in rows:
                if "seed" in r and r["task"] in base:
                    b = base[r["task"]]
                    lo, hi = newcombe(r["accuracy"], b["accuracy"], r["n"], b["n"])
                    cell = f"{r['accuracy'] - b['accuracy']:+.2f} [{lo:+.2f}, {hi:+.2f}]"
                    diffs.setdefault((r["expert"], str(r["seed"])), {})[r["task"]] = cell
            for expert, seed in sorted(diffs, key=lambda k: k[1]):
                cells = diffs[(expert, seed)]
                lines.append(f"| {expert} | {seed} | " + " | ".join(cells.get(t, "") for t in tasks) + " |")
        lines.append("")
    lines += _adapt_summary()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tasks", nargs="+", default=["arc-easy", "arithmetic", "reading"], choices=sorted(TASKS)
    )
    parser.add_argument(
        "--phases",
        nargs="+",
        default=["experts", "matrix", "classifier", "adapt", "summary"],
        choices=["experts", "matrix", "classifier", "adapt", "summary"],
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-samples", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--lora-lr", type=float, default=5e-4)
    parser.add_argument("--max-grad-norm", type=float, default=1e-3)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--num-train", type=int, default=48)
    parser.add_argument("--num-eval", type=int, default=60)
    parser.add_argument("--num-cls", type=int, default=16)
    parser.add_argument("--num-adapt", type=int, default=40)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--population", type=int, default=6)
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--ntp-tasks", nargs="*", default=["arc-easy"])
    parser.add_argument("--lora-tasks", nargs="*", default=["arc-easy"])
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.25,
        help="validation share for early stopping (0: keep the last)",
    )
    parser.add_argument("--adapt-targets", nargs="*", default=None, help="adapt: only these targets")
    parser.add_argument("--force", action="store_true")
    parser.add_argument(
        "--no-base", action="store_true", help="matrix: skip the base rows (another seed's run)"
    )
    parser.add_argument("--tag", default="", help="suffix of the results files (e.g. -seed1)")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="experts: keep expert files that exist; matrix: skip cells that a results file has (same n)",
    )
    parser.add_argument("--bundle", action="store_true")
    args = parser.parse_args()
    TAG["value"] = args.tag
    for name in [n for n in TASKS if n not in args.tasks]:
        del TASKS[name]
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, tokenizer = load_model()
    llm = LocalLLM(model, tokenizer, num_threads=1)
    svf = SVF(model, SVFConfig(), progress=False)
    phases = {
        "experts": phase_experts,
        "matrix": phase_matrix,
        "classifier": phase_classifier,
        "adapt": phase_adapt,
        "summary": phase_summary,
    }
    for phase in args.phases:
        if phase != "summary" and _done(phase, args.force):
            print(f"{phase}: done already ({RESULTS / (phase + TAG['value'] + '.json')})")
            continue
        start = time.perf_counter()
        phases[phase](args, model, tokenizer, llm, svf)
        print(f"{phase}: {time.perf_counter() - start:.0f} s", flush=True)
    if args.bundle:
        BUNDLE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(EXPERTS / f"arc-easy-svf-seed{args.seeds[0]}.safetensors", BUNDLE)
        print(f"bundled {BUNDLE}")


if __name__ == "__main__":
    main()
