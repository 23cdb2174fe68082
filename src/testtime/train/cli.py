"""``testtime lm train|eval|sample|export|models``, and the shared ``train``/``eval`` commands of the families.

Titans and DeepSeek-V3 reuse the same commands with their own default model and run folder::

    from testtime.train.cli import add_train_command
    add_train_command(titans_app, default_model="titans-mac", default_out="runs/titans",
                      help_text="Train a Titans language model.")

Flags follow the shared vocabulary (:mod:`testtime.cli_options`, docs/cli.md); every flag is also a
configuration key (``--out`` is ``out`` or ``out_dir``, ``--threads`` is ``threads`` or ``num_threads``),
so a config file, ``--set KEY=VALUE`` and the flags speak the same names.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer

from testtime import cli_options as opt
from testtime.errors import UserError

__all__ = ["add_eval_command", "add_train_command", "register"]


def _collect_config(
    *, default_model: str, default_out: str, config: Path | None, flags: dict[str, Any], overrides: list[str]
) -> Any:
    """defaults < --config file < explicit flags < --set KEY=VALUE."""
    from testtime.train.config import TrainConfig, config_from_dict, load_config, parse_overrides

    cfg = TrainConfig(model=default_model, out_dir=default_out)
    if config is not None:
        cfg = load_config(config, base=cfg)
    cfg = config_from_dict({k: v for k, v in flags.items() if v is not None}, base=cfg)
    return config_from_dict(parse_overrides(overrides), base=cfg)


def _default(name: str) -> str:
    """The TrainConfig default of ``name``, as ``--help`` shows it."""
    from testtime.train.config import TrainConfig

    field = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    value = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default  # type: ignore[misc]
    if isinstance(value, list):
        return ", ".join(value) or "none"
    return "none" if value is None else str(value)


def _int(name: str, help_text: str, *, lo: int, hi: int = 1_000_000_000) -> Any:
    return typer.Option(None, help=help_text, min=lo, max=hi, show_default=_default(name))


def add_train_command(
    app: typer.Typer,
    *,
    default_model: str,
    default_out: str | None = None,
    name: str = "train",
    help_text: str = "Train a language model.",
) -> None:
    """Add a ``train`` command running :func:`testtime.train.train` with ``default_model`` unless --model says otherwise.

    Args:
        app: the command group (e.g. ``testtime titans``).
        default_model: registry name used when ``--model`` is not given.
        default_out: the default run folder (default ``runs/<family>``: each family has its own, so runs of
            different families never resume each other).
        name: the command's name.
        help_text: the command's help.
    """
    from testtime.train.config import family_command

    default_out = default_out or f"runs/{family_command(default_model)}"

    def train_command(
        config: Path | None = typer.Option(
            None, "--config", "-c", help="YAML or JSON file of training options (keys: these flags' names)."
        ),
        model: str | None = typer.Option(
            None,
            "--model",
            "-m",
            help="Registered model name (`testtime lm models`).",
            show_default=default_model,
        ),
        preset: str | None = typer.Option(
            None,
            help="The model's preset (e.g. tiny, shakespeare, small).",
            show_default="the model's default",
        ),
        corpus: list[str] | None = typer.Option(
            None,
            help="shakespeare, stdlib, or a text file / folder; repeat to combine.",
            show_default="shakespeare",
        ),
        tokenizer: str | None = typer.Option(
            None, help="byte, bpe (trained on the training split), or a tokenizer.json.", show_default="byte"
        ),
        seq_len: int | None = _int("seq_len", "Tokens per training sequence.", lo=1, hi=1 << 20),
        batch_size: int | None = _int(
            "batch_size", "Sequences per optimizer step (all processes together).", lo=1, hi=1 << 20
        ),
        micro_batch_size: int | None = _int(
            "micro_batch_size",
            "Sequences per forward pass per process (none: batch size / processes).",
            lo=1,
            hi=1 << 20,
        ),
        max_steps: int | None = typer.Option(
            None,
            "--max-steps",
            min=1,
            max=1_000_000_000,
            help="Optimizer steps.",
            show_default=_default("max_steps"),
        ),
        lr: float | None = typer.Option(
            None, callback=opt.positive, help="Peak learning rate.", show_default=_default("lr")
        ),
        warmup_steps: int | None = _int("warmup_steps", "Linear warmup steps.", lo=0),
        eval_every: int | None = _int(
            "eval_every", "Evaluate bits per byte every N steps (0: only at the end).", lo=0
        ),
        ckpt_every: int | None = _int("ckpt_every", "Checkpoint every N steps (0: only at the end).", lo=0),
        out: str | None = typer.Option(
            None,
            "--out",
            "-o",
            help="Run folder for checkpoints, config.yaml and metrics.jsonl.",
            show_default=default_out,
        ),
        resume: str | None = typer.Option(
            None,
            help="auto (latest checkpoint in --out), never, or a checkpoint folder.",
            show_default="auto",
        ),
        logger: list[str] | None = typer.Option(
            None,
            help="tensorboard, wandb or trackio, on top of metrics.jsonl (always written); repeatable.",
            show_default="jsonl",
        ),
        seed: int | None = typer.Option(
            None,
            "--seed",
            min=0,
            max=opt.MAX_SEED,
            help="Seed for initialisation and data order.",
            show_default=_default("seed"),
        ),
        device: str | None = typer.Option(
            None,
            "--device",
            callback=opt.device_callback,
            help="auto (cuda when available), cpu, cuda or cuda:N.",
            show_default="auto",
        ),
        dtype: str | None = typer.Option(None, help="float32, or bfloat16 autocast.", show_default="float32"),
        parallel: str | None = typer.Option(
            None, help="ddp or fsdp, under torchrun with several processes.", show_default="ddp"
        ),
        threads: int | None = opt.threads_option(None),
        no_progress: bool = opt.no_progress_option(),
        set_: list[str] | None = typer.Option(
            None,
            "--set",
            help="Any option as KEY=VALUE (model fields as model_config.KEY=VALUE); repeatable.",
        ),
        dry_run: bool = typer.Option(
            False, "--dry-run", help="Print the resolved configuration, parameter count and memory; exit."
        ),
        force: bool = typer.Option(
            False, "--force", help="Start even if the model looks too large for this machine."
        ),
    ) -> None:
        import yaml

        from testtime.train.config import validate
        from testtime.train.distributed import world_size_from_env
        from testtime.train.plan import plan, resolved_dict, summary_lines

        flags = {
            "model": model,
            "preset": preset,
            "corpus": corpus or None,
            "tokenizer": tokenizer,
            "seq_len": seq_len,
            "batch_size": batch_size,
            "micro_batch_size": micro_batch_size,
            "max_steps": max_steps,
            "lr": lr,
            "warmup_steps": warmup_steps,
            "eval_every": eval_every,
            "ckpt_every": ckpt_every,
            "out_dir": out,
            "resume": resume,
            "loggers": logger or None,
            "seed": seed,
            "device": device,
            "dtype": dtype,
            "parallel": parallel,
            "num_threads": threads,
            "progress": False if no_progress else None,
        }
        cfg = _collect_config(
            default_model=default_model,
            default_out=default_out,
            config=config,
            flags=flags,
            overrides=set_ or [],
        )
        world = world_size_from_env()
        validate(cfg, world_size=world)
        described = plan(cfg, world_size=world)
        if dry_run:
            typer.echo(yaml.safe_dump(resolved_dict(cfg, described), sort_keys=False), nl=False)
            for line in summary_lines(described):
                typer.echo(f"# {line}")
            return
        for warning in described.warnings:
            typer.secho(f"warning: {warning}", err=True)
        if described.too_large and not force:
            raise UserError(
                "the model looks too large for this machine (see the warning above; --dry-run shows the "
                "estimate); pass --force to start anyway"
            )
        from testtime.train.loop import train

        result = train(cfg)
        if result.checkpoint is not None:
            last_eval = (
                f", validation {result.evals[max(result.evals)]:.4f} bits per byte" if result.evals else ""
            )
            typer.echo(f"step {result.step}{last_eval}; checkpoint {result.checkpoint}")

    app.command(name, help=help_text)(train_command)


def add_eval_command(
    app: typer.Typer, *, families: tuple[str, ...] | None, name: str = "eval", help_text: str | None = None
) -> None:
    """Add an ``eval RUN`` command: validation bits per byte of a trained run (:mod:`testtime.train.evaluate`).

    Args:
        app: the command group.
        families: accepted model-name prefixes (None: any registered model).
        name: the command's name.
        help_text: the command's help.
    """

    def eval_command(
        run: Path = typer.Argument(..., help="A run folder (--out of train) or a checkpoint folder."),
        corpus: list[str] | None = typer.Option(
            None, help="shakespeare, stdlib or a path; repeatable.", show_default="the run's own corpus"
        ),
        seq_len: int | None = typer.Option(
            None, min=1, max=1 << 20, help="Tokens per evaluated sequence.", show_default="the run's seq_len"
        ),
        sequences: int = typer.Option(16, min=1, max=1_000_000, help="Validation sequences to evaluate."),
        batch_size: int = typer.Option(
            4, "--batch-size", "--batch", min=1, max=1 << 16, help="Sequences per forward pass."
        ),
        device: str = opt.device_option("cpu"),
        threads: int | None = opt.threads_option(None),
    ) -> None:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        from testtime.train.evaluate import evaluate_run

        res = evaluate_run(
            run,
            corpus=corpus or None,
            seq_len=seq_len,
            sequences=sequences,
            batch_size=batch_size,
            device=device,
            families=families,
        )
        typer.echo(f"{res.model}: {res.bpb:.4f} bits per byte on {res.sequences} x {res.seq_len} tokens")

    app.command(
        name,
        help=help_text or "Validation bits per byte of a trained run (held-out documents of the corpus).",
    )(eval_command)


def register(app: typer.Typer) -> None:
    """Add the ``lm`` command group."""
    lm = typer.Typer(
        help=(
            "Train, evaluate, sample and export small language models from scratch (the Transformer++ "
            "baseline; any registered model with --model)."
        ),
        no_args_is_help=True,
    )
    add_train_command(
        lm,
        default_model="transformer",
        default_out="runs/lm",
        help_text="Train a language model (default: the Transformer++ baseline on tinyshakespeare bytes).",
    )
    add_eval_command(lm, families=None)

    @lm.command("sample")
    def sample_command(
        run: Path = typer.Argument(..., help="A run folder (--out of train) or a checkpoint folder."),
        prompt: str = typer.Option("\n", "--prompt", help="Text to continue."),
        max_new_tokens: int = opt.max_new_tokens_option(),
        num_samples: int = opt.num_samples_option(help_text="How many samples."),
        temperature: float = opt.temperature_option(),
        top_p: float = opt.top_p_option(),
        top_k: int = opt.top_k_option(),
        seed: int = opt.seed_option(),
        context: int | None = typer.Option(
            None,
            min=1,
            max=1 << 24,
            help="Longest context the model reads.",
            show_default="the training seq_len",
        ),
        device: str = opt.device_option("cpu"),
        threads: int | None = opt.threads_option(None),
    ) -> None:
        """Sample text from a trained model."""
        import torch

        from testtime.train.sample import generate, load_trained, resolve_checkpoint

        resolve_checkpoint(run)  # a missing or empty folder fails here, before torch threads or models
        if threads is not None:
            torch.set_num_threads(threads)
        model, tok, saved = load_trained(run, device=device)
        generator = torch.Generator().manual_seed(seed)
        for i in range(num_samples):
            ids = generate(
                model,
                tok.encode(prompt) or [tok.eot_id],
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_k=top_k or None,
                top_p=top_p,
                stop_id=tok.eot_id,
                generator=generator,
                max_context=context or int(saved["seq_len"]),
            )
            if num_samples > 1:
                typer.echo(f"--- sample {i + 1} ---")
            typer.echo(prompt + tok.decode(ids))

    @lm.command("export")
    def export_command(
        run: Path = typer.Argument(
            ..., help="A run folder of `lm train` (Transformer++) or a checkpoint folder."
        ),
        out: Path = typer.Argument(..., help="Folder to write (transformers save_pretrained layout)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace the files of an existing folder."),
    ) -> None:
        """Write a Transformer++ run as a transformers LlamaForCausalLM folder (for `llm generate`, `serve`)."""
        from testtime.train.export import export_llama

        written = export_llama(run, out, overwrite=overwrite)
        typer.echo(
            f"wrote {written} (LlamaForCausalLM); try: testtime llm generate --model {written} --raw 'ROMEO:'"
        )

    @lm.command("models")
    def models_command() -> None:
        """List the registered model families and their presets."""
        from testtime.train.registry import list_models

        for spec in list_models():
            presets = ", ".join(f"{p}*" if p == spec.default_preset else p for p in spec.presets)
            typer.echo(f"{spec.name:16s} {spec.description}  [presets: {presets}]")

    app.add_typer(lm, name="lm")
