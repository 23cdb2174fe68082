"""``testtime titans train|eval|niah``: train Titans models with the shared trainer, evaluate them.

- ``train``: the shared trainer's command (docs/train.md) with ``--model titans-mac`` by default
  (``titans-lmm``, ``titans-mag``, ``titans-mal``, ``titans-swa`` for the sliding-window baseline).
- ``eval RUN``: validation bits per byte of a trained run at a sequence length of your choice (longer than
  training to see how the memory extrapolates).
- ``niah RUN``: S-NIAH pass-key / number / word and BABILong-style accuracy at growing lengths.
"""

from __future__ import annotations

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``titans`` command group."""
    titans = typer.Typer(
        help="Titans (arXiv 2501.00663): neural memory that learns at test time; LMM, MAC, MAG, MAL models.",
        no_args_is_help=True,
    )

    try:
        from testtime.train.cli import add_train_command
    except ModuleNotFoundError:  # the trainer is not installed
        pass
    else:
        add_train_command(
            titans,
            default_model="titans-mac",
            help_text=(
                "Train a Titans language model (default --model titans-mac --preset small; also titans-lmm, "
                "titans-mag, titans-mal, and titans-swa, the sliding-window baseline)."
            ),
        )

    @titans.command("eval")
    def eval_command(
        run: str = typer.Argument(..., help="A run folder or checkpoint folder written by `titans train`."),
        corpus: list[str] = typer.Option(
            None, help="shakespeare, stdlib or a path (default: the run's own corpus); repeatable."
        ),
        seq_len: int = typer.Option(None, help="Tokens per evaluated sequence (default: the run's seq_len)."),
        sequences: int = typer.Option(16, help="Validation sequences to evaluate."),
        batch: int = typer.Option(4, help="Sequences per forward pass."),
    ) -> None:
        """Validation bits per byte of a trained Titans run (held-out documents of the corpus)."""
        import torch

        from testtime.errors import UserError
        from testtime.train.data import PackedSequences, load_documents, split_documents, tokenize_documents
        from testtime.train.distributed import DistInfo
        from testtime.train.loop import SPLIT_SEED, evaluate
        from testtime.train.sample import load_trained

        model, tokenizer, saved = load_trained(run)
        docs = load_documents(corpus or saved.get("corpus") or ["shakespeare"])
        _, val_docs = split_documents(docs, val_fraction=saved.get("val_fraction", 0.1), seed=SPLIT_SEED)
        length = seq_len or saved.get("seq_len", 256)
        data = PackedSequences(tokenize_documents(tokenizer, val_docs), length)
        if len(data) == 0:
            raise UserError(f"the validation split is shorter than seq_len {length}")
        info = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
        with torch.no_grad():
            bpb = evaluate(
                model,
                data,
                tokenizer.token_bytes(),
                num_sequences=sequences,
                micro_batch_size=batch,
                info=info,
            )
        typer.echo(
            f"{saved.get('model')}: {bpb:.4f} bits per byte on {min(sequences, len(data))} x {length} tokens"
        )

    @titans.command("niah")
    def niah_command(
        run: str = typer.Argument(..., help="A run folder or checkpoint folder written by `titans train`."),
        task: str = typer.Option("passkey", help="passkey, number, word or babilong."),
        lengths: list[int] = typer.Option([256, 512, 1024], "--length", help="Haystack tokens; repeatable."),
        samples: int = typer.Option(10, help="Samples per length."),
        seed: int = typer.Option(0, help="Seed of the generated samples."),
    ) -> None:
        """Needle-in-a-haystack accuracy (S-NIAH, BABILong-style) of a trained model at growing lengths."""
        from testtime.errors import UserError
        from testtime.titans.niah import TASKS, evaluate_niah
        from testtime.train.sample import load_trained

        if task not in TASKS:
            raise UserError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
        if samples < 1 or any(n < 1 for n in lengths):
            raise UserError("samples and lengths must be positive")
        model, tokenizer, saved = load_trained(run)
        acc = evaluate_niah(model, tokenizer, task=task, lengths=lengths, num_samples=samples, seed=seed)  # type: ignore[arg-type]
        typer.echo(
            f"| {saved.get('model')} {task} | " + " | ".join(f"{n}: {a:.2f}" for n, a in acc.items()) + " |"
        )

    app.add_typer(titans, name="titans")
