"""``testtime lm train|sample|models``, and :func:`add_train_command` for other model families' CLIs.

Titans and DeepSeek-V3 reuse the same command with their own default model::

    from testtime.train.cli import add_train_command
    add_train_command(titans_app, default_model="titans-mac", help_text="Train a Titans language model.")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

__all__ = ["add_train_command", "register"]


def _collect_config(
    *, default_model: str, config: Path | None, flags: dict[str, Any], overrides: list[str]
) -> Any:
    """defaults < --config file < explicit flags < --set KEY=VALUE."""
    from testtime.train.config import TrainConfig, config_from_dict, load_config, parse_overrides

    cfg = TrainConfig(model=default_model)
    if config is not None:
        cfg = load_config(config, base=cfg)
    cfg = config_from_dict({k: v for k, v in flags.items() if v is not None}, base=cfg)
    return config_from_dict(parse_overrides(overrides), base=cfg)


def add_train_command(
    app: typer.Typer, *, default_model: str, name: str = "train", help_text: str = "Train a language model."
) -> None:
    """Add a ``train`` command running :func:`testtime.train.train` with ``default_model`` unless --model says otherwise.

    Args:
        app: the command group (e.g. ``testtime titans``).
        default_model: registry name used when ``--model`` is not given.
        name: the command's name.
        help_text: the command's help.
    """

    def train_command(
        config: Path | None = typer.Option(
            None, "--config", "-c", help="YAML or JSON file of training options."
        ),
        model: str | None = typer.Option(None, help=f"Registered model name (default {default_model})."),
        preset: str | None = typer.Option(None, help="The model's preset (e.g. tiny, shakespeare, small)."),
        corpus: list[str] | None = typer.Option(
            None, help="shakespeare, stdlib, or a text file / folder; repeat to combine."
        ),
        tokenizer: str | None = typer.Option(
            None, help="byte, bpe (trained on the training split), or a tokenizer.json."
        ),
        seq_len: int | None = typer.Option(None, help="Tokens per training sequence."),
        batch_size: int | None = typer.Option(
            None, help="Sequences per optimizer step (all processes together)."
        ),
        micro_batch_size: int | None = typer.Option(None, help="Sequences per forward pass per process."),
        max_steps: int | None = typer.Option(None, help="Optimizer steps."),
        lr: float | None = typer.Option(None, help="Peak learning rate."),
        warmup_steps: int | None = typer.Option(None, help="Linear warmup steps."),
        eval_every: int | None = typer.Option(
            None, help="Evaluate bits per byte every N steps (0: only at the end)."
        ),
        ckpt_every: int | None = typer.Option(None, help="Checkpoint every N steps (0: only at the end)."),
        out: str | None = typer.Option(None, "--out", "-o", help="Run folder for checkpoints and logs."),
        resume: str | None = typer.Option(
            None, help="auto (latest checkpoint in --out), never, or a checkpoint folder."
        ),
        logger: list[str] | None = typer.Option(
            None, help="jsonl, tensorboard, wandb or trackio; repeat for several."
        ),
        seed: int | None = typer.Option(None, help="Seed for initialisation and data order."),
        device: str | None = typer.Option(None, help="auto, cpu, cuda or cuda:N."),
        dtype: str | None = typer.Option(None, help="float32, or bfloat16 autocast."),
        parallel: str | None = typer.Option(None, help="ddp or fsdp, under torchrun with several processes."),
        threads: int | None = typer.Option(
            None, help="torch CPU threads per process (default: torch's choice)."
        ),
        no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
        set_: list[str] | None = typer.Option(
            None,
            "--set",
            help="Any option as KEY=VALUE (model fields as model_config.KEY=VALUE); repeatable.",
        ),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved configuration and exit."),
    ) -> None:
        import dataclasses

        import yaml

        from testtime.train.config import validate
        from testtime.train.distributed import world_size_from_env

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
        cfg = _collect_config(default_model=default_model, config=config, flags=flags, overrides=set_ or [])
        validate(cfg, world_size=world_size_from_env())
        if dry_run:
            typer.echo(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
            return
        from testtime.train.loop import train

        result = train(cfg)
        if result.checkpoint is not None:
            last_eval = (
                f", validation {result.evals[max(result.evals)]:.4f} bits per byte" if result.evals else ""
            )
            typer.echo(f"step {result.step}{last_eval}; checkpoint {result.checkpoint}")

    app.command(name, help=help_text)(train_command)


def register(app: typer.Typer) -> None:
    """Add the ``lm`` command group."""
    lm = typer.Typer(
        help="Train and sample small language models from scratch (the Transformer++ baseline).",
        no_args_is_help=True,
    )
    add_train_command(
        lm,
        default_model="transformer",
        help_text="Train a language model (default: the Transformer++ baseline on tinyshakespeare bytes).",
    )

    @lm.command("sample")
    def sample_command(
        run: Path = typer.Argument(..., help="A run folder (--out of train) or a checkpoint folder."),
        prompt: str = typer.Option("\n", help="Text to continue."),
        max_new_tokens: int = typer.Option(300, help="Tokens to generate per sample."),
        temperature: float = typer.Option(0.8, help="Softmax temperature (0: greedy)."),
        top_k: int | None = typer.Option(50, help="Sample among the k most likely tokens (0: all)."),
        num_samples: int = typer.Option(1, help="How many samples."),
        seed: int = typer.Option(0, help="Sampling seed."),
        context: int | None = typer.Option(
            None, help="Longest context the model reads (default: the training sequence length)."
        ),
        device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    ) -> None:
        """Sample text from a trained model."""
        import torch

        from testtime.errors import UserError
        from testtime.train.sample import generate, load_trained

        if max_new_tokens < 1 or num_samples < 1:
            raise UserError("max-new-tokens and num-samples must be >= 1")
        if temperature < 0:
            raise UserError("temperature must be >= 0")
        model, tok, saved = load_trained(run, device=device)
        if context is not None and context < 1:
            raise UserError("context must be >= 1")
        generator = torch.Generator().manual_seed(seed)
        for i in range(num_samples):
            ids = generate(
                model,
                tok.encode(prompt) or [tok.eot_id],
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_k=top_k or None,
                stop_id=tok.eot_id,
                generator=generator,
                max_context=context or int(saved["seq_len"]),
            )
            if num_samples > 1:
                typer.echo(f"--- sample {i + 1} ---")
            typer.echo(prompt + tok.decode(ids))

    @lm.command("models")
    def models_command() -> None:
        """List the registered model families and their presets."""
        from testtime.train.registry import list_models

        for spec in list_models():
            presets = ", ".join(f"{p}*" if p == spec.default_preset else p for p in spec.presets)
            typer.echo(f"{spec.name:16s} {spec.description}  [presets: {presets}]")

    app.add_typer(lm, name="lm")
