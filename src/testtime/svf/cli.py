"""``testtime svf decompose|train|adapt|eval``: Transformer² on any transformers causal LM.

- ``decompose``: SVD of the target matrices, cached (a later ``train`` reads the cache).
- ``train TASK``: an expert by REINFORCE (or ``--method ntp``, or the ``--method lora`` baseline) on the
  task's training split; writes ``<out>/expert.safetensors`` (LoRA: ``<out>/lora/``) and ``metrics.jsonl``.
- ``adapt PROMPT --expert FILE...``: answer a prompt with the base model and adapted (one expert, or the
  prompt-based choice among several); ``--export DIR`` saves the adapted model as a plain checkpoint.
- ``eval TASK --expert FILE...``: test accuracy of the base model and of the adaptation strategies
  (``fixed`` with the first expert, ``prompt``, ``classifier`` with ``--cls-expert``, ``few-shot`` CEM).
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


def _choice(value: str, allowed: tuple[str, ...], flag: str) -> str:
    if value not in allowed:
        raise UserError(f"{flag} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def _knobs(items: list[str] | None) -> dict[str, int]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--knob takes name=value, got {item!r}")
        try:
            out[key.strip()] = int(value)
        except ValueError:
            raise UserError(f"--knob {key} needs an integer value, got {value!r}") from None
    return out


def _targets(text: str) -> tuple[str, ...]:
    targets = tuple(t.strip() for t in text.split(",") if t.strip())
    if not targets:
        raise UserError("--targets needs at least one group (mlp, attn, all) or module name")
    return targets


_MAX_LAYERS = 10_000  # more decoder layers than any model has: --layers is checked against it before loading


def _layers(text: str | None, num_layers: int = _MAX_LAYERS) -> list[int] | None:
    """The decoder layers ``--layers`` names (None: all), or a one-line error naming the flag."""
    from testtime.svf.svf import parse_layers

    try:
        return parse_layers(text, num_layers)
    except UserError as exc:
        raise UserError(f"--layers: {exc}") from None


_PARAMETERIZATIONS = ("raw", "sigmoid")
_ENVS = ("auto", "cloze", "generate")


def _load(model_name: str | None, threads: int | None) -> tuple[Any, Any]:
    import torch

    from testtime.llm.loading import load_model

    if threads:
        torch.set_num_threads(threads)
    return load_model(model_name)


def _svf_for(
    model: Any, *, targets: tuple[str, ...], layers: str | None, parameterization: str, progress: bool
):
    from testtime.svf.svf import SVF, SVFConfig

    num_layers = getattr(getattr(model, "config", None), "num_hidden_layers", _MAX_LAYERS)
    config = SVFConfig(
        targets=targets,
        layers=_layers(layers, num_layers),
        parameterization=_choice(parameterization, _PARAMETERIZATIONS, "--parameterization"),  # type: ignore[arg-type]
    )
    return SVF(model, config, progress=progress)


def _svf_for_expert(model: Any, expert: Any, progress: bool):
    from testtime.svf.evaluate import svf_for_expert

    return svf_for_expert(model, expert, progress=progress)


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *[line(r) for r in rows]])


def _task(name: str) -> Any:
    from testtime.tasks import get_task

    return get_task(name)  # UserError for unknown names


def register(app: typer.Typer) -> None:
    """Add the ``svf`` command group."""
    svf_app = typer.Typer(
        help="Transformer² (arXiv 2501.06252): SVF experts trained with RL, two-pass self-adaptation.",
        no_args_is_help=True,
    )

    @svf_app.command("decompose")
    def decompose_cmd(
        model: str = opt.model_option("smollm2", "Model name, folder or file."),
        targets: str = typer.Option("mlp", "--targets", help="mlp, attn, all, or module names (q_proj,...)."),
        layers: str = typer.Option("all", "--layers", help="Decoder layers, e.g. 0-3,8 (default all)."),
        threads: int = opt.threads_option(),
        no_progress: bool = opt.no_progress_option(),
    ) -> None:
        """SVD of the target matrices in float32, cached by a hash of the weights."""
        from testtime.svf.svf import _cache_file

        start = time.perf_counter()
        _layers(layers)
        chosen = _targets(targets)
        base, _ = _load(model, threads)
        svf = _svf_for(base, targets=chosen, layers=layers, parameterization="raw", progress=not no_progress)
        path = _cache_file(svf.weights_hash, svf.config.dtype)
        typer.echo(
            _table(
                [
                    ("matrices", str(len(svf.names))),
                    ("trainable SVF parameters", f"{svf.num_trainable():,}"),
                    ("weights hash", svf.weights_hash),
                    ("cache", str(path)),
                    ("seconds", f"{time.perf_counter() - start:.1f}"),
                ],
                ("decomposition", "value"),
            )
        )

    @svf_app.command("train")
    def train_cmd(
        task: str = typer.Argument(..., help="A task name (`testtime tasks list`)."),
        model: str = opt.model_option("smollm2", "Model name, folder or file."),
        method: str = typer.Option("svf", "--method", help="svf (REINFORCE), ntp (next-token SVF), lora."),
        env: str = typer.Option("auto", "--env", help="auto, cloze (multiple choice) or generate."),
        targets: str = typer.Option("mlp", "--targets", help="mlp, attn, all, or module names."),
        layers: str = typer.Option("all", "--layers", help="Decoder layers, e.g. 0-3,8."),
        parameterization: str = typer.Option("raw", "--parameterization", help="raw (paper) or sigmoid."),
        num_train: int = typer.Option(64, "--num-train", min=2, max=100_000, help="Training instances."),
        knob: list[str] = typer.Option(None, "--knob", help="Task difficulty, name=value (repeatable)."),
        max_steps: int = opt.max_steps_option(20),
        batch_size: int = typer.Option(8, "--batch-size", min=1, max=4096, help="Prompts per step."),
        num_samples: int = opt.num_samples_option(1, "Rollouts per prompt."),
        baseline: str = typer.Option("none", "--baseline", help="none (paper) or group."),
        reward: str = typer.Option("solved", "--reward", help="solved (+1/-1, paper) or score (graded)."),
        normalize: str = typer.Option("sum", "--normalize", help="sum or mean token log-probs."),
        kl_coef: float = typer.Option(
            0.05, "--kl-coef", min=0, max=1e6, callback=opt.finite, help="λ of eq. 1."
        ),
        lr: float = typer.Option(None, "--lr", callback=opt.positive, help="Adam lr (svf 2e-3, lora 5e-4)."),
        max_grad_norm: float = typer.Option(1e-3, "--max-grad-norm", callback=opt.positive, help="Clipping."),
        eval_every: int = typer.Option(5, "--eval-every", min=1, max=10**9, help="Validate every N steps."),
        patience: int = typer.Option(
            3, "--patience", min=0, max=10**9, help="Stop after N flat validations."
        ),
        temperature: float = typer.Option(1.0, "--temperature", "-t", min=0, max=100, callback=opt.finite),
        max_new_tokens: int = opt.max_new_tokens_option(64),
        seed: int = opt.seed_option(),
        threads: int = opt.threads_option(),
        out: str = opt.out_option(None, "Run folder (default runs/svf/<task>-<method>)."),
        no_progress: bool = opt.no_progress_option(),
    ) -> None:
        """Train an expert on TASK's training split (validation split carved out of it)."""
        from testtime.svf.experts import expert_from_svf, save_expert
        from testtime.svf.reinforce import (
            LoRAPolicy,
            ReinforceConfig,
            SVFPolicy,
            make_env,
            num_trainable,
            train,
        )

        _choice(method, ("svf", "ntp", "lora"), "--method")
        _choice(parameterization, _PARAMETERIZATIONS, "--parameterization")
        _layers(layers)
        chosen = _targets(targets)
        task_obj = _task(task)
        knobs = _knobs(knob)
        split = "train" if "train" in task_obj.splits else task_obj.splits[0]
        instances = task_obj.instances(split, seed=seed, n=num_train, **knobs)
        environment = make_env(task_obj, mode=_choice(env, _ENVS, "--env"), max_new_tokens=max_new_tokens)
        config = ReinforceConfig(
            objective="ntp" if method == "ntp" else "reinforce",
            lr=lr or (5e-4 if method == "lora" else 2e-3),
            max_grad_norm=max_grad_norm,
            kl_coef=kl_coef,
            batch_size=batch_size,
            num_samples=num_samples,
            baseline=_choice(baseline, ("none", "group"), "--baseline"),  # type: ignore[arg-type]
            reward=_choice(reward, ("solved", "score"), "--reward"),  # type: ignore[arg-type]
            normalize=_choice(normalize, ("sum", "mean"), "--normalize"),  # type: ignore[arg-type]
            temperature=temperature,
            max_steps=max_steps,
            eval_every=eval_every,
            patience=patience,
            seed=seed,
        )
        run_dir = opt.run_folder(out or f"runs/svf/{task}-{method}")
        base, tokenizer = _load(model, threads)
        if method == "lora":
            policy: Any = LoRAPolicy(base, tokenizer, num_threads=threads)
            svf = None
        else:
            svf = _svf_for(
                base,
                targets=chosen,
                layers=layers,
                parameterization=parameterization,
                progress=not no_progress,
            )
            policy = SVFPolicy(svf, tokenizer, num_threads=threads)
        metrics_file = (run_dir / "metrics.jsonl").open("w")

        def log(record: dict[str, Any]) -> None:
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()
            if no_progress:
                typer.echo(json.dumps(record))

        result = train(policy, environment, instances, config, log=log, progress=not no_progress)
        metrics_file.close()
        summary = {
            "task": task,
            "method": method,
            "base_val_accuracy": result.base_val,
            "best_val_accuracy": result.best_val,
            "steps": result.steps,
            "seconds": round(result.seconds, 1),
            "trainable_parameters": num_trainable(policy),
        }
        if svf is not None:
            expert = expert_from_svf(
                svf,
                base_model=model,
                task=task,
                method="ntp" if method == "ntp" else "reinforce",
                metrics=summary,
            )
            saved = save_expert(expert, run_dir / "expert.safetensors")
        else:
            saved = run_dir / "lora"
            policy.model.save_pretrained(saved)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        rows = [(k, str(v)) for k, v in summary.items()] + [("saved", str(saved))]
        typer.echo(_table(rows, ("result", "value")))

    @svf_app.command("adapt")
    def adapt_cmd(
        prompt: str = typer.Argument(..., help="The prompt to answer."),
        expert: list[str] = typer.Option(..., "--expert", "-e", help="Expert file(s) (repeatable)."),
        model: str = opt.model_option("smollm2", "The experts' base model."),
        max_new_tokens: int = opt.max_new_tokens_option(),
        temperature: float = opt.temperature_option(),
        seed: int = opt.seed_option(),
        threads: int = opt.threads_option(),
        export: str = typer.Option(None, "--export", help="Save the adapted model here (plain checkpoint)."),
    ) -> None:
        """Answer PROMPT with the base model and adapted: one expert, or the prompt-based pick among several."""
        from testtime.llm.local import LocalLLM
        from testtime.svf.adapt import OTHER, classify_prompt
        from testtime.svf.experts import load_expert

        if export and Path(export).exists() and not Path(export).is_dir():
            raise UserError(f"--export {export} is a file, not a folder")
        experts = [load_expert(p) for p in expert]
        base, tokenizer = _load(model, threads)
        svf = _svf_for_expert(base, experts[0], progress=False)
        for e in experts:
            e.check_compatible(svf)
        llm = LocalLLM(base, tokenizer, num_threads=threads)
        chat = [[{"role": "user", "content": prompt}]]
        params = {"temperature": temperature, "max_tokens": max_new_tokens, "seed": seed}
        base_answer = llm.generate(chat, **params)[0][0].text
        chosen, how = experts[0], "only expert"
        if len(experts) > 1:
            names = [e.task or Path(p).stem for e, p in zip(experts, expert, strict=True)]
            label, how = classify_prompt(llm, [prompt], names)[0]
            chosen = None if label == OTHER else experts[names.index(label)]
        if chosen is not None:
            chosen.apply(svf)
            svf.merge(llm)
        adapted = llm.generate(chat, **params)[0][0].text
        typer.echo(f"expert: {chosen.task if chosen else 'none (base model)'} ({how})")
        typer.echo(f"\n[base]\n{base_answer}\n\n[adapted]\n{adapted}")
        if export:
            try:
                svf.export(export, tokenizer)
            except OSError as exc:
                raise UserError(f"cannot write --export {export}: {exc.strerror or exc}") from None
            typer.echo(f"\nadapted model saved to {export} (load it with --model {export})")

    @svf_app.command("eval")
    def eval_cmd(
        task: str = typer.Argument(..., help="The task to evaluate on (test split)."),
        expert: list[str] = typer.Option(..., "--expert", "-e", help="Expert file(s) (repeatable)."),
        strategy: list[str] = typer.Option(
            None, "--strategy", help="fixed, prompt, classifier, few-shot (repeatable; default fixed)."
        ),
        cls_expert: str = typer.Option(
            None, "--cls-expert", help="Classification expert (strategy classifier)."
        ),
        model: str = opt.model_option("smollm2", "The experts' base model."),
        env: str = typer.Option("auto", "--env", help="auto, cloze or generate."),
        num: int = typer.Option(50, "--num", min=1, max=100_000, help="Test instances (n)."),
        shots: int = typer.Option(5, "--shots", min=1, max=10_000, help="Few-shot: k of the n instances."),
        per_layer: bool = typer.Option(False, "--per-layer", help="Few-shot: one α per expert and matrix."),
        population: int = typer.Option(8, "--population", min=2, max=10_000, help="CEM population."),
        generations: int = typer.Option(5, "--generations", min=1, max=10_000, help="CEM generations."),
        knob: list[str] = typer.Option(None, "--knob", help="Task difficulty, name=value."),
        max_new_tokens: int = opt.max_new_tokens_option(64),
        seed: int = opt.seed_option(),
        threads: int = opt.threads_option(),
        out: str = opt.out_option("runs/svf/eval"),
    ) -> None:
        """Accuracy of the base model and of each adaptation strategy on TASK's test split."""
        from testtime.svf.evaluate import evaluate_strategies
        from testtime.svf.experts import load_expert

        strategies = [
            _choice(s, ("fixed", "prompt", "classifier", "few-shot"), "--strategy")
            for s in strategy or ["fixed"]
        ]
        if "classifier" in strategies and not cls_expert:
            raise UserError("--strategy classifier needs --cls-expert FILE")
        if "few-shot" in strategies and shots >= num:
            raise UserError(f"--shots ({shots}) must be smaller than --num ({num})")
        env_mode = _choice(env, _ENVS, "--env")
        knobs = _knobs(knob)
        task_obj = _task(task)
        experts = [load_expert(p) for p in expert]
        classifier = load_expert(cls_expert) if cls_expert else None
        run_dir = opt.run_folder(out)
        instances = task_obj.instances("test", seed=seed, n=num, **knobs)
        base, tokenizer = _load(model, threads)
        rows = evaluate_strategies(
            base,
            tokenizer,
            task_obj,
            instances,
            experts,
            strategies=strategies,
            classifier=classifier,
            env_mode=env_mode,
            shots=shots,
            per_layer=per_layer,
            population=population,
            generations=generations,
            max_new_tokens=max_new_tokens,
            seed=seed,
            threads=threads,
        )
        with (run_dir / "metrics.jsonl").open("a") as handle:
            for row in rows:
                handle.write(json.dumps({"task": task, **row}) + "\n")
        typer.echo(
            _table(
                [(r["strategy"], f"{r['accuracy']:.3f}", str(r["n"]), r.get("note", "")) for r in rows],
                ("strategy", "accuracy", "n", "note"),
            )
        )

    app.add_typer(svf_app, name="svf")
