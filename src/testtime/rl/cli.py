"""``testtime r1 sft|grpo|sample|distill|eval``: the R1 recipe's stages from the command line.

Every run folder (``--out``, default ``runs/r1/<stage>``) gets a ``metrics.jsonl``; trained policies are
``save_pretrained`` folders under ``<out>/policy`` that ``testtime llm generate --model DIR`` loads. The
sampling and run flags come from the shared vocabulary (:mod:`testtime.cli_options`) and every count has a
range; bad values end with one line and exit status 2 before any model loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from testtime import cli_options as opt
from testtime.errors import UserError

__all__ = ["register"]

_MODEL_HELP = "Model: 'smollm2' (embedded), a save_pretrained folder, a .gguf file or a hub id."
_MAX_PROBLEMS = 100_000  # problems drawn from a task's split


def _threads(threads: int | None) -> None:
    if threads is not None:  # its range is checked by the option
        import torch

        torch.set_num_threads(threads)


def _device(name: str) -> str:
    """The device the option checked, with ``auto`` resolved (cuda when available)."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# Options every stage shares (ranges and messages of the shared vocabulary).
def _model() -> Any:
    return opt.model_option("smollm2", _MODEL_HELP)


def _num_problems(default: int, help_text: str = "Problems.") -> Any:
    return typer.Option(default, "--num-problems", min=1, max=_MAX_PROBLEMS, help=help_text)


def _threads_option() -> Any:
    return opt.threads_option(help_text="torch threads.")


def _device_option() -> Any:
    return opt.device_option("cpu", "cpu, cuda, cuda:N or auto (cuda when available).")


def _knobs(values: list[str] | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in values or []:
        for part in value.split(","):
            key, sep, number = part.partition("=")
            if not sep or not key.strip():
                raise UserError(f"--difficulty wants KEY=INT, got {part!r}")
            try:
                out[key.strip()] = int(number)
            except ValueError:
                raise UserError(f"--difficulty {key.strip()} must be an integer, got {number!r}") from None
    return out


def _task(name: str) -> Any:
    from testtime.tasks.base import get_task

    try:
        return get_task(name)
    except (KeyError, ValueError) as error:
        raise UserError(str(error).strip("'\"")) from None


def _load(model: str, device: str) -> tuple[Any, Any]:
    from testtime.llm.loading import load_model

    loaded, tokenizer = load_model(None if model in ("smollm2", "embedded", "default") else model)
    loaded = loaded.float().to(device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return loaded, tokenizer


def _seed(name: str, value: int) -> int:
    from testtime.cli_options import MAX_SEED

    if not 0 <= value <= MAX_SEED:
        raise UserError(f"{name} must be in 0..{MAX_SEED}, got {value}")
    return value


def _split_warning(split: str, *, training: bool) -> None:
    if training and split == "test":
        typer.echo(
            "warning: training on the test split; report results on problems you did not train on", err=True
        )
    if not training and split == "train":
        typer.echo(
            "warning: evaluating on the train split; held-out results come from --split test", err=True
        )


def _template(name: str) -> str:
    from testtime.rl.sft import TEMPLATES

    if name not in TEMPLATES:
        raise UserError(f"--template must be one of {', '.join(TEMPLATES)}, got {name!r}")
    return name


def _instances(task: Any, split: str, count: int, seed: int, knobs: dict[str, int]) -> list[Any]:
    if knobs and task.difficulty == {}:
        raise UserError(f"task {task.name!r} has no difficulty knobs")
    instances = task.instances(split, seed=seed, n=count, **knobs)
    if not instances:
        raise UserError(f"task {task.name!r} split {split!r} has no problems")
    return instances


def _check_rows(rows: list[dict[str, Any]]) -> None:
    """The SFT row checks of ``sft_train``, run before a model is loaded."""
    from testtime.rl.sft import check_sft_rows

    check_sft_rows(rows)


def _echo_json(payload: dict[str, Any]) -> None:
    typer.echo(json.dumps(payload, default=str))


def register(app: typer.Typer) -> None:
    """Add the ``testtime r1`` group."""
    r1 = typer.Typer(
        help="DeepSeek-R1: GRPO with rule-based rewards, cold start, rejection sampling, distillation.",
        no_args_is_help=True,
    )

    @r1.command("grpo")
    def grpo(
        model: str = _model(),
        task_name: str = typer.Option("arithmetic", "--task", help="A testtime task (testtime tasks list)."),
        split: str = typer.Option(
            "train", "--split", help="Training split (never the test split you report)."
        ),
        difficulty: list[str] = typer.Option(None, "--difficulty", help="Task knobs KEY=INT (repeatable)."),
        num_problems: int = _num_problems(256, "Problems in the training set."),
        rewards: str = typer.Option(
            "accuracy,format", "--rewards", help="accuracy,graded,format,language,overlong,math"
        ),
        template: str = typer.Option("r1", "--template", help="chat | r1 | r1-zero (prefilled <think>)."),
        num_samples: int = opt.num_samples_option(8, "Completions per prompt (GRPO's G, at least 2)."),
        prompts_per_step: int = typer.Option(
            4, "--prompts-per-step", min=1, max=10_000, help="Prompts per optimizer step."
        ),
        max_new_tokens: int = opt.max_new_tokens_option(128, "Most tokens per completion."),
        temperature: float = opt.temperature_option(1.0, "Sampling temperature (> 0)."),
        top_p: float = opt.top_p_option(1.0, "Nucleus sampling (keep 1 for exact ratios)."),
        loss_type: str = typer.Option("grpo", "--loss-type", help="grpo | bnpo | dapo | dr_grpo"),
        beta: float = typer.Option(
            0.0, "--beta", min=0, callback=opt.finite, help="KL coefficient (R1: 0.001)."
        ),
        epsilon: float = typer.Option(0.2, "--epsilon", min=0, callback=opt.finite, help="Lower clip range."),
        epsilon_high: float = typer.Option(
            None, "--epsilon-high", min=0, callback=opt.finite, help="Upper clip range (DAPO: 0.28)."
        ),
        scale_rewards: str = typer.Option("group", "--scale-rewards", help="group | batch | none"),
        num_iterations: int = typer.Option(
            1, "--num-iterations", min=1, max=1000, help="Updates per batch of rollouts (mu)."
        ),
        dynamic_sampling: bool = typer.Option(
            False, "--dynamic-sampling", help="DAPO: refill zero-std groups."
        ),
        learning_rate: float = typer.Option(1e-6, "--lr", help="Learning rate (R1: 3e-6)."),
        grad_accum: int = typer.Option(
            1, "--grad-accum", min=1, max=10_000, help="Micro-batches per optimizer step."
        ),
        max_steps: int = opt.max_steps_option(50),
        save_every: int = typer.Option(
            0, "--save-every", min=0, max=10**9, help="Checkpoint every N steps (0: at the end)."
        ),
        seed: int = opt.seed_option(help_text="Seed for data order and sampling."),
        threads: int = _threads_option(),
        device: str = _device_option(),
        out: Path = opt.out_option(Path("runs/r1/grpo"), "Run folder."),
        no_resume: bool = typer.Option(False, "--no-resume", help="Start over even if a checkpoint exists."),
        no_progress: bool = opt.no_progress_option("No progress bar."),
    ) -> None:
        """Reasoning RL: GRPO on a task's training split with rule-based rewards (runs under torchrun too)."""
        from testtime.llm.local import LocalLLM
        from testtime.rl.rewards import resolve_rewards
        from testtime.rl.sft import task_dataset
        from testtime.rl.trainer import GRPOConfig, GRPOTrainer
        from testtime.train.distributed import setup, teardown

        _threads(threads)
        dev = _device(device)
        template = _template(template)
        task = _task(task_name)
        knobs = _knobs(difficulty)
        _instances(task, split, 1, seed, knobs)  # validates split and knobs
        _split_warning(split, training=True)
        try:
            config = GRPOConfig(
                num_generations=num_samples,
                prompts_per_step=prompts_per_step,
                max_completion_length=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                loss_type=loss_type,
                beta=beta,
                epsilon=epsilon,
                epsilon_high=epsilon_high,
                scale_rewards=scale_rewards,
                num_iterations=num_iterations,
                dynamic_sampling=dynamic_sampling,
                learning_rate=learning_rate,
                gradient_accumulation_steps=grad_accum,
                max_steps=max_steps,
                save_every=save_every,
                seed=seed,
                progress=not no_progress,
            )
        except ValueError as error:
            raise UserError(str(error)) from None
        try:
            funcs = resolve_rewards(rewards, task=task, max_completion_length=max_new_tokens)
        except ValueError as error:
            raise UserError(f"--rewards: {error}") from None
        dataset = task_dataset(task, split=split, n=num_problems, seed=seed, template=template, **knobs)
        opt.run_folder(out)
        info = setup(dev)
        try:
            policy, tokenizer = _load(model, str(info.device))
            llm = LocalLLM(policy, tokenizer, max_batch_size=max(32, num_samples))
            try:
                trainer = GRPOTrainer(policy, tokenizer, funcs, dataset, config, out_dir=out, llm=llm)
            except ValueError as error:
                raise UserError(str(error)) from None
            history = trainer.train(resume=not no_resume)
        finally:
            teardown()
        if info.is_main and history:
            last = history[-1]
            _echo_json({"steps": trainer.step_count, "reward": last["reward"], "policy": str(out / "policy")})

    @r1.command("sft")
    def sft(
        model: str = _model(),
        data: Path = typer.Option(None, "--data", help="JSONL rows {prompt, completion} (from r1 sample)."),
        task_name: str = typer.Option(
            None, "--task", help="Cold start: rule-written R1-format traces of this task."
        ),
        difficulty: list[str] = typer.Option(None, "--difficulty", help="Task knobs KEY=INT (repeatable)."),
        num_problems: int = _num_problems(64, "Cold-start examples to write."),
        template: str = typer.Option("r1", "--template", help="chat | r1 | r1-zero"),
        learning_rate: float = typer.Option(1e-5, "--lr", help="Learning rate."),
        batch_size: int = typer.Option(8, "--batch-size", min=1, max=10_000, help="Rows per step."),
        epochs: float = typer.Option(2.0, "--epochs", help="Passes over the data."),
        max_steps: int = opt.max_steps_option(None, "Steps (overrides --epochs)."),
        seed: int = opt.seed_option(),
        threads: int = _threads_option(),
        device: str = _device_option(),
        out: Path = opt.out_option(Path("runs/r1/sft"), "Run folder."),
        no_progress: bool = opt.no_progress_option("No progress bar."),
    ) -> None:
        """Cold-start SFT (rule-written traces of --task) or SFT on a JSONL file (rejection samples)."""
        from testtime.rl.sft import SFTConfig, cold_start_examples, read_jsonl, sft_train, write_jsonl

        _threads(threads)
        dev = _device(device)
        try:
            config = SFTConfig(
                learning_rate=learning_rate,
                batch_size=batch_size,
                epochs=epochs,
                max_steps=max_steps,
                seed=seed,
                progress=not no_progress,
            )
        except ValueError as error:
            raise UserError(str(error)) from None
        template = _template(template)
        knobs = _knobs(difficulty)
        if (data is None) == (task_name is None):
            raise UserError("give exactly one of --data FILE or --task NAME")
        if data is not None and not data.is_file():
            raise UserError(f"--data {data}: no such file")
        try:
            if data is not None:
                rows = read_jsonl(data)
            else:
                rows = cold_start_examples(
                    _task(task_name),
                    n=num_problems,
                    seed=seed,
                    template=template,
                    **knobs,
                )
            _check_rows(rows)
        except ValueError as error:
            raise UserError(str(error)) from None
        opt.run_folder(out)
        write_jsonl(out / "sft_data.jsonl", rows)
        policy, tokenizer = _load(model, dev)
        try:
            history = sft_train(policy, tokenizer, rows, config, out_dir=out)
        except ValueError as error:
            raise UserError(str(error)) from None
        _echo_json({"steps": len(history), "final_loss": history[-1]["loss"], "policy": str(out / "policy")})

    def _sample(
        model: str,
        task_name: str,
        split: str,
        difficulty: list[str] | None,
        num_problems: int,
        num_samples: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        template: str,
        require_format: bool,
        seed: int,
        dev: str,
        out: Path,
    ) -> tuple[list[dict[str, Any]], dict[str, float]]:
        from testtime.llm.local import LocalLLM
        from testtime.rl.sft import rejection_sample

        template = _template(template)
        task = _task(task_name)
        instances = _instances(task, split, num_problems, seed, _knobs(difficulty))
        opt.run_folder(out)
        teacher, tokenizer = _load(model, dev)
        llm = LocalLLM(teacher.eval(), tokenizer)
        return rejection_sample(
            llm,
            task,
            instances,
            num_samples=num_samples,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_new_tokens,
            template=template,
            require_format=require_format,
            seed=seed,
        )

    @r1.command("sample")
    def sample(
        model: str = _model(),
        task_name: str = typer.Option("arithmetic", "--task", help="A testtime task."),
        split: str = typer.Option("train", "--split", help="Split to sample problems from."),
        difficulty: list[str] = typer.Option(None, "--difficulty", help="Task knobs KEY=INT (repeatable)."),
        num_problems: int = _num_problems(64),
        num_samples: int = opt.num_samples_option(4, "Completions per problem."),
        temperature: float = opt.temperature_option(0.7),
        top_p: float = opt.top_p_option(),
        max_new_tokens: int = opt.max_new_tokens_option(256, "Most tokens per completion."),
        template: str = typer.Option("r1", "--template", help="chat | r1 | r1-zero"),
        require_format: bool = typer.Option(
            False, "--require-format", help="Keep only R1-format completions."
        ),
        seed: int = opt.seed_option(),
        threads: int = _threads_option(),
        device: str = _device_option(),
        out: Path = opt.out_option(Path("runs/r1/sample"), "Run folder (writes sft.jsonl)."),
    ) -> None:
        """Rejection sampling: sample, verify, keep the solved completions as an SFT set (<out>/sft.jsonl)."""
        from testtime.rl.sft import write_jsonl
        from testtime.train.loggers import JsonlLogger

        _threads(threads)
        rows, stats = _sample(
            model,
            task_name,
            split,
            difficulty,
            num_problems,
            num_samples,
            temperature,
            top_p,
            max_new_tokens,
            template,
            require_format,
            seed,
            _device(device),
            out,
        )
        path = write_jsonl(out / "sft.jsonl", rows)
        logger = JsonlLogger(out)
        logger.log(stats, 0)
        logger.close()
        _echo_json({**stats, "data": str(path)})

    @r1.command("distill")
    def distill(
        teacher: str = typer.Option(..., "--teacher", help="The teacher model (e.g. a GRPO policy folder)."),
        model: str = opt.model_option("smollm2", "The student model."),
        task_name: str = typer.Option("arithmetic", "--task", help="A testtime task."),
        split: str = typer.Option("train", "--split", help="Split to sample problems from."),
        difficulty: list[str] = typer.Option(None, "--difficulty", help="Task knobs KEY=INT (repeatable)."),
        num_problems: int = _num_problems(64),
        num_samples: int = opt.num_samples_option(4, "Teacher completions per problem."),
        temperature: float = opt.temperature_option(0.7, "Teacher sampling temperature."),
        max_new_tokens: int = opt.max_new_tokens_option(256, "Most tokens per completion."),
        template: str = typer.Option("r1", "--template", help="chat | r1 | r1-zero"),
        learning_rate: float = typer.Option(1e-5, "--lr", help="Student learning rate."),
        epochs: float = typer.Option(2.0, "--epochs", help="Passes over the teacher's verified traces."),
        max_steps: int = opt.max_steps_option(None, "Student steps (overrides --epochs)."),
        seed: int = opt.seed_option(),
        threads: int = _threads_option(),
        device: str = _device_option(),
        out: Path = opt.out_option(Path("runs/r1/distill"), "Run folder."),
        no_progress: bool = opt.no_progress_option("No progress bar."),
    ) -> None:
        """Distillation (R1 sec. 2.4): SFT of a student on the teacher's verified traces."""
        from testtime.rl.sft import SFTConfig, sft_train, write_jsonl

        _threads(threads)
        dev = _device(device)
        try:
            config = SFTConfig(
                learning_rate=learning_rate,
                epochs=epochs,
                max_steps=max_steps,
                seed=seed,
                progress=not no_progress,
            )
        except ValueError as error:
            raise UserError(str(error)) from None
        rows, stats = _sample(
            teacher,
            task_name,
            split,
            difficulty,
            num_problems,
            num_samples,
            temperature,
            1.0,
            max_new_tokens,
            template,
            False,
            seed,
            dev,
            out,
        )
        write_jsonl(out / "teacher_traces.jsonl", rows)
        if not rows:
            raise UserError("the teacher solved none of the problems: nothing to distil")
        student, tokenizer = _load(model, dev)
        history = sft_train(student, tokenizer, rows, config, out_dir=out)
        _echo_json({**stats, "steps": len(history), "policy": str(out / "policy")})

    @r1.command("eval")
    def evaluate_cmd(
        model: str = _model(),
        task_name: str = typer.Option("arithmetic", "--task", help="A testtime task."),
        split: str = typer.Option("test", "--split", help="Held-out split (test)."),
        difficulty: list[str] = typer.Option(None, "--difficulty", help="Task knobs KEY=INT (repeatable)."),
        num_problems: int = _num_problems(64),
        num_samples: int = typer.Option(
            4, "--num-samples", "-n", min=0, max=10_000, help="k: samples per problem (0: greedy only)."
        ),
        seeds: str = typer.Option("0", "--seeds", help="Comma-separated sampling seeds."),
        temperature: float = opt.temperature_option(0.6, "Sampling temperature (> 0; R1: 0.6)."),
        top_p: float = opt.top_p_option(0.95, "Nucleus sampling (R1: 0.95)."),
        max_new_tokens: int = opt.max_new_tokens_option(256, "Most tokens per completion."),
        template: str = typer.Option("r1", "--template", help="chat | r1 | r1-zero"),
        seed: int = opt.seed_option(help_text="Which problems (the split's shuffle seed)."),
        threads: int = _threads_option(),
        device: str = _device_option(),
        out: Path = opt.out_option(Path("runs/r1/eval"), "Run folder (completions.jsonl)."),
    ) -> None:
        """Greedy pass@1, mean@k and pass@k with Wilson intervals; completions.jsonl for `testtime tasks audit`."""
        from testtime.llm.local import LocalLLM
        from testtime.rl.eval import evaluate
        from testtime.train.loggers import JsonlLogger

        _threads(threads)
        dev = _device(device)
        template = _template(template)
        task = _task(task_name)
        instances = _instances(task, split, num_problems, seed, _knobs(difficulty))
        try:
            seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise UserError(f"--seeds wants comma-separated integers, got {seeds!r}") from None
        for value in seed_list:
            _seed("--seeds", value)
        if not seed_list:
            raise UserError(f"--seeds wants at least one integer, got {seeds!r}")
        _split_warning(split, training=False)
        if temperature == 0:
            raise UserError(
                "--temperature must be > 0: it samples the k completions (greedy pass@1 is always made)"
            )
        opt.run_folder(out)
        policy, tokenizer = _load(model, dev)
        llm = LocalLLM(policy.eval(), tokenizer)
        try:
            result = evaluate(
                llm,
                task,
                instances,
                k=num_samples,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_new_tokens,
                seeds=seed_list,
                template=template,
                out=out,
            )
        except ValueError as error:
            raise UserError(str(error)) from None
        logger = JsonlLogger(out)
        logger.log({k: v for k, v in result.as_dict().items() if isinstance(v, float)}, 0)
        logger.close()
        _echo_json(result.as_dict())

    app.add_typer(r1, name="r1")
