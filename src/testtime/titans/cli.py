"""``testtime titans train|eval|niah``: train Titans models with the shared trainer, evaluate them.

- ``train``: the shared trainer's command (docs/train.md) with ``--model titans-mac`` by default
  (``titans-lmm``, ``titans-mag``, ``titans-mal``, ``titans-swa`` for the sliding-window baseline), writing
  to ``runs/titans`` unless ``--out`` says otherwise.
- ``eval RUN``: validation bits per byte of a trained run at a sequence length of your choice (longer than
  training to see how the memory extrapolates).
- ``niah RUN``: S-NIAH pass-key / number / word and BABILong-style accuracy at growing lengths, as a table
  with the chance level and what the model was trained on; ``niah needle`` evaluates the bundled MAC model
  trained on the synthetic pass-key task (the one the demo shows).
"""

from __future__ import annotations

from pathlib import Path

import typer

from testtime import cli_options as opt

__all__ = ["register"]

NEEDLE = "needle"  # the RUN name of the bundled needle model


def _niah_rows_bundled(
    lengths: list[int], samples: int, seed: int
) -> tuple[list[tuple[int, float]], str, str]:
    """Accuracy of the bundled needle model; returns (rows, chance text, training note)."""
    from safetensors.torch import load_model

    from testtime.errors import UserError
    from testtime.titans.demo import NEEDLE_CHECKPOINT, NUM_VALUES, needle_model, needle_model_accuracy

    if not NEEDLE_CHECKPOINT.is_file():
        raise UserError(f"the bundled needle model is not installed ({NEEDLE_CHECKPOINT} is missing)")
    if min(lengths) < 8:
        raise UserError("the needle task needs lengths of at least 8 tokens")
    model = needle_model("mac")
    load_model(model, str(NEEDLE_CHECKPOINT))
    model.eval()
    rows = [(n, needle_model_accuracy(model, n, samples, seed)) for n in lengths]
    chance = f"{1 / NUM_VALUES:.3f} (1 of {NUM_VALUES} values)"
    note = (
        "bundled titans-mac needle model: 2 layers, attention window 16, trained 600 steps on the synthetic "
        "pass-key task at length 64 (experiments/titans_needle.py); needles sit beyond the window"
    )
    return rows, chance, note


_CHANCE = {
    "passkey": "0.000 (a 5-digit key: 1 in 90,000)",
    "number": "0.000 (a 7-digit number: 1 in 9,000,000)",
    "word": "0.100 (1 of 10 words)",
    "babilong": "0.167 (1 of 6 places)",
}


def register(app: typer.Typer) -> None:
    """Add the ``titans`` command group."""
    titans = typer.Typer(
        help="Titans (arXiv 2501.00663): neural memory that learns at test time; LMM, MAC, MAG, MAL models.",
        no_args_is_help=True,
    )

    from testtime.train.cli import add_eval_command, add_train_command

    add_train_command(
        titans,
        default_model="titans-mac",
        default_out="runs/titans",
        help_text=(
            "Train a Titans language model (default --model titans-mac --preset small; also titans-lmm, "
            "titans-mag, titans-mal, and titans-swa, the sliding-window baseline)."
        ),
    )
    add_eval_command(
        titans,
        families=("titans",),
        help_text="Validation bits per byte of a trained Titans run (held-out documents of the corpus).",
    )

    @titans.command("niah")
    def niah_command(
        run: str = typer.Argument(
            ...,
            help=f"A run or checkpoint folder of `titans train`, or '{NEEDLE}' for the bundled needle model.",
        ),
        task: str = typer.Option(
            "passkey",
            help="passkey, number, word or babilong (text runs; the needle model has its own task).",
        ),
        lengths: list[int] = typer.Option(
            [256, 512, 1024], "--length", min=1, max=1 << 20, help="Haystack tokens; repeatable."
        ),
        samples: int = typer.Option(10, min=1, max=100_000, help="Samples per length."),
        seed: int = opt.seed_option(help_text="Seed of the generated samples."),
        threads: int | None = opt.threads_option(None),
    ) -> None:
        """Needle-in-a-haystack accuracy at growing lengths, as a table with the chance level."""
        from testtime.errors import UserError
        from testtime.titans.niah import TASKS

        if task not in TASKS:
            raise UserError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        if run == NEEDLE:
            rows, chance, note = _niah_rows_bundled(list(lengths), samples, seed)
            model_name, task_name = "titans-mac (bundled)", "synthetic pass-key"
        else:
            from testtime.titans.niah import evaluate_niah
            from testtime.train.sample import load_trained, peek_model_name

            if not Path(run).exists():
                raise UserError(f"{run} does not exist (a run folder of `titans train`, or '{NEEDLE}')")
            model_name = peek_model_name(run)
            model, tokenizer, saved = load_trained(run)
            acc = evaluate_niah(model, tokenizer, task=task, lengths=lengths, num_samples=samples, seed=seed)  # type: ignore[arg-type]
            rows, chance, task_name = list(acc.items()), _CHANCE[task], task
            note = (
                f"trained on {', '.join(saved.get('corpus') or ['?'])} at seq_len {saved.get('seq_len')} for "
                f"{saved.get('max_steps')} steps of next-token prediction, not on retrieval: expect chance "
                f"unless it was trained on needles (try `titans niah {NEEDLE}`)"
            )
        typer.echo(f"{model_name}, {task_name}, {samples} samples per length, seed {seed}")
        typer.echo(f"model: {note}")
        typer.echo("")
        typer.echo("| haystack tokens | accuracy | chance |")
        typer.echo("|---:|---:|---|")
        for length, accuracy in rows:
            typer.echo(f"| {length} | {accuracy:.2f} | {chance} |")

    app.add_typer(titans, name="titans")
