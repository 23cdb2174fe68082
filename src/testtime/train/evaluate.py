"""Bits per byte of a trained run on held-out documents: ``lm eval``, ``titans eval`` and ``deepseek eval``.

The held-out documents are those the trainer held out (same split seed, same ``val_fraction``), so the
number is comparable with the ``validation ... bits per byte`` lines of training; a longer ``seq_len``
than training measures how the model extrapolates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["EvalResult", "evaluate_run"]


@dataclass
class EvalResult:
    """Attributes: model (registry name), bpb (bits per byte), sequences and seq_len evaluated."""

    model: str
    bpb: float
    sequences: int
    seq_len: int


def evaluate_run(
    run: str | Path,
    *,
    corpus: list[str] | None = None,
    seq_len: int | None = None,
    sequences: int = 16,
    batch_size: int = 4,
    device: str = "cpu",
    families: tuple[str, ...] | None = None,
) -> EvalResult:
    """Validation bits per byte of the run's latest checkpoint.

    Args:
        run: a run folder or checkpoint folder.
        corpus: corpora to evaluate on (default: the run's own).
        seq_len: tokens per evaluated sequence (default: the run's).
        sequences: how many validation sequences (the first ones of the split).
        batch_size: sequences per forward pass.
        device: where to run.
        families: accepted model-name prefixes (e.g. ``("titans",)``); another model is a UserError.

    Returns:
        The :class:`EvalResult`.
    """
    import torch

    from testtime.errors import UserError
    from testtime.train.data import PackedSequences, load_documents, split_documents, tokenize_documents
    from testtime.train.distributed import DistInfo
    from testtime.train.loop import SPLIT_SEED, evaluate
    from testtime.train.sample import load_trained, peek_model_name

    if corpus:
        from testtime.train.data import CORPORA

        for source in corpus:
            if source not in CORPORA and not Path(source).expanduser().exists():
                raise UserError(f"--corpus {source!r}: no such corpus or path")
    name = peek_model_name(run)
    if families is not None and not name.startswith(families):
        raise UserError(f"{run} holds a {name!r} model; this command evaluates {'/'.join(families)} models")
    model, tokenizer, saved = load_trained(run, device=device)
    docs = load_documents(corpus or saved.get("corpus") or ["shakespeare"])
    _, val_docs = split_documents(docs, val_fraction=saved.get("val_fraction", 0.1), seed=SPLIT_SEED)
    length = seq_len or int(saved.get("seq_len", 256))
    data = PackedSequences(tokenize_documents(tokenizer, val_docs), length)
    if len(data) == 0:
        raise UserError(
            f"the validation split is shorter than one sequence of {length} tokens; lower --seq-len"
        )
    info = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device(device))
    with torch.no_grad():
        bpb = evaluate(
            model,
            data,
            tokenizer.token_bytes(),
            num_sequences=sequences,
            micro_batch_size=batch_size,
            info=info,
        )
    return EvalResult(model=name, bpb=bpb, sequences=min(sequences, len(data)), seq_len=length)
