"""Corpora, the held-out split by document, packing into fixed-length sequences, and the sample order.

The pipeline is: sources -> documents -> split by document (train / validation) -> tokenize, each document
followed by ``<|endoftext|>`` -> one long token stream per split -> non-overlapping windows of
``seq_len + 1`` tokens (inputs and next-token labels). Training windows are visited in a seeded random
order, epoch after epoch; the sample for global position ``n`` is a pure function of ``(seed, n)``, so the
data position of a run is one integer (the number of sequences consumed) and resuming needs nothing else.

Shape legend: ``b`` sequences in a batch, ``t`` sequence length.
"""

from __future__ import annotations

import hashlib
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from testtime.errors import UserError
from testtime.train.tokenizer import ByteTokenizer, Tokenizer

__all__ = [
    "CORPORA",
    "Document",
    "PackedSequences",
    "SampleOrder",
    "load_documents",
    "shakespeare_documents",
    "split_documents",
    "stdlib_documents",
    "tokenize_documents",
]

CORPORA = ("shakespeare", "stdlib")
_TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".json", ".jsonl", ".csv", ".html", ".tex", ".c", ".h", ""}


@dataclass(frozen=True)
class Document:
    """One unit of the held-out split.

    Attributes:
        name: a stable identifier (a path, or ``corpus/index``); the split is a function of it.
        text: the document's text.
    """

    name: str
    text: str


def shakespeare_documents(*, chunk_chars: int = 10_000) -> list[Document]:
    """tinyshakespeare (bundled), cut at blank lines into documents of about ``chunk_chars`` characters.

    The corpus is one file of consecutive speeches; cutting it into ~110 pieces gives the split-by-document
    something to split without cutting a speech in two.
    """
    text = resources.files("testtime").joinpath("data/tinyshakespeare/input.txt").read_text(encoding="utf-8")
    speeches = text.split("\n\n")
    docs: list[Document] = []
    current: list[str] = []
    size = 0
    for speech in speeches:
        current.append(speech)
        size += len(speech) + 2
        if size >= chunk_chars:
            docs.append(Document(f"shakespeare/{len(docs):04d}", "\n\n".join(current) + "\n\n"))
            current, size = [], 0
    if current:
        docs.append(Document(f"shakespeare/{len(docs):04d}", "\n\n".join(current)))
    return docs


def stdlib_documents() -> list[Document]:
    """Every ``.py`` file of the running Python's standard library (not site-packages), one document each."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        f for f in root.rglob("*.py") if "site-packages" not in f.parts and "__pycache__" not in f.parts
    )
    return _read_files(files, root=root, prefix="stdlib/")


def _read_files(files: Iterable[Path], *, root: Path | None, prefix: str) -> list[Document]:
    docs = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary or unreadable: not text
        name = prefix + (str(f.relative_to(root)) if root is not None else str(f))
        docs.append(Document(name, text))
    return docs


def load_documents(sources: Sequence[str], *, max_bytes: int | None = None) -> list[Document]:
    """Documents from named corpora (``shakespeare``, ``stdlib``) and user paths.

    Args:
        sources: corpus names, text files (one document each) or directories (every UTF-8 file with a text
            suffix under it, recursively, one document each).
        max_bytes: stop adding documents once this many UTF-8 bytes are collected (None: all).

    Returns:
        The documents, in a deterministic order.

    Raises:
        UserError: a source that is neither a corpus name nor an existing path, or no text at all.
    """
    docs: list[Document] = []
    for source in sources:
        if source == "shakespeare":
            docs += shakespeare_documents()
        elif source == "stdlib":
            docs += stdlib_documents()
        else:
            path = Path(source).expanduser()
            if path.is_file():
                docs += _read_files([path], root=None, prefix="")
            elif path.is_dir():
                files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix in _TEXT_SUFFIXES)
                docs += _read_files(files, root=path, prefix=f"{path}/")
            else:
                raise UserError(
                    f"unknown corpus {source!r}: use one of {', '.join(CORPORA)} or a file/folder path"
                )
    if max_bytes is not None:
        kept, total = [], 0
        for doc in docs:
            if total >= max_bytes:
                break
            kept.append(doc)
            total += len(doc.text.encode("utf-8"))
        docs = kept
    docs = [d for d in docs if d.text]
    if not docs:
        raise UserError(f"no text found in {list(sources)}")
    return docs


def split_documents(
    docs: Sequence[Document], *, val_fraction: float, seed: int = 0
) -> tuple[list[Document], list[Document]]:
    """Hold out whole documents: those whose seeded hash of the name ranks in the lowest ``val_fraction``.

    The choice depends only on the names, the fraction and the seed, not on the order of ``docs``.

    Args:
        docs: all documents (names must be unique).
        val_fraction: share of documents held out, in ``[0, 1)``; at least one when positive.
        seed: changes which documents are held out.

    Returns:
        ``(train, validation)`` documents, each in the input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0.0:
        return list(docs), []
    if len(docs) < 2:
        raise UserError("a held-out split needs at least 2 documents; add text or set val_fraction to 0")
    names = [d.name for d in docs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"document names must be unique; repeated: {', '.join(duplicates[:5])}")

    def rank(name: str) -> bytes:
        return hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()

    num_val = min(len(docs) - 1, max(1, round(val_fraction * len(docs))))
    held_out = set(sorted(names, key=rank)[:num_val])
    return [d for d in docs if d.name not in held_out], [d for d in docs if d.name in held_out]


def tokenize_documents(tokenizer: Tokenizer, docs: Sequence[Document]) -> torch.Tensor:
    """One token stream: each document's ids followed by ``<|endoftext|>``.

    Returns:
        ``(total_tokens,)`` int64.
    """
    if isinstance(tokenizer, ByteTokenizer):  # ids are the bytes: skip the Python lists
        arrays = [np.frombuffer(d.text.encode("utf-8"), dtype=np.uint8) for d in docs]
    else:
        arrays = [np.asarray(ids, dtype=np.int64) for ids in tokenizer.encode_batch([d.text for d in docs])]
    eot = np.array([tokenizer.eot_id], dtype=np.int64)
    pieces = [part for array in arrays for part in (array.astype(np.int64), eot)]
    return torch.from_numpy(np.concatenate(pieces)) if pieces else torch.empty(0, dtype=torch.long)


class PackedSequences:
    """Non-overlapping windows of a token stream: sequence ``i`` is ``tokens[i*t : i*t + t + 1]``.

    Args:
        tokens: ``(total_tokens,)`` stream.
        seq_len: ``t``, the model's input length.
    """

    def __init__(self, tokens: torch.Tensor, seq_len: int) -> None:
        if seq_len < 1:
            raise UserError(f"seq_len must be positive, got {seq_len}")
        self.tokens, self.seq_len = tokens, seq_len
        self.num_sequences = (len(tokens) - 1) // seq_len

    def __len__(self) -> int:
        return self.num_sequences

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``indices (b,) -> input_ids (b, t), labels (b, t)`` with ``labels[:, j] = input_ids[:, j + 1]``."""
        starts = indices.long()[:, None] * self.seq_len
        window = self.tokens[starts + torch.arange(self.seq_len + 1)]
        return window[:, :-1], window[:, 1:]


class SampleOrder:
    """The training order: epoch ``e`` visits all sequences in ``randperm(num, seed + e)`` order.

    ``index(n)`` is the sequence used at global position ``n``, a pure function of ``(seed, n)``.

    Args:
        num_sequences: size of the training set.
        seed: the data-order seed.
    """

    def __init__(self, num_sequences: int, *, seed: int) -> None:
        if num_sequences < 1:
            raise UserError(
                f"no training sequence: the data holds {num_sequences} (add text or lower the sequence length)"
            )
        self.num_sequences, self.seed = num_sequences, seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.num_sequences, generator=generator)
        return self._perm

    def indices(self, start: int, count: int) -> torch.Tensor:
        """Sequence indices for global positions ``start .. start + count - 1``: ``(count,)``."""
        out = torch.empty(count, dtype=torch.long)
        for k, n in enumerate(range(start, start + count)):
            epoch, offset = divmod(n, self.num_sequences)
            out[k] = self._permutation(epoch)[offset]
        return out
