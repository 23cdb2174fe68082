"""Tokenizers for training from scratch: raw UTF-8 bytes, or a small byte-level BPE trained on the corpus.

Both map text to integer ids, reserve one special id ``<|endoftext|>`` (the document separator), and
know how many bytes of UTF-8 text each id stands for, which is what bits per byte needs.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Protocol

import torch

from testtime.errors import UserError

__all__ = ["EOT", "BPETokenizer", "ByteTokenizer", "Tokenizer", "load_tokenizer", "train_bpe"]

EOT = "<|endoftext|>"


class Tokenizer(Protocol):
    """What the trainer needs from a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def eot_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: list[int]) -> str: ...

    def token_bytes(self) -> torch.Tensor:
        """``(vocab_size,)`` int64: UTF-8 bytes each id stands for (0 for special ids)."""
        ...

    def save(self, path: str | Path) -> None: ...


class ByteTokenizer:
    """Ids 0..255 are the bytes of the UTF-8 text; id 256 is ``<|endoftext|>``."""

    kind = "byte"

    @property
    def vocab_size(self) -> int:
        return 257

    @property
    def eot_id(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def token_bytes(self) -> torch.Tensor:
        counts = torch.ones(257, dtype=torch.long)
        counts[256] = 0
        return counts

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"testtime_tokenizer": "byte"}) + "\n")


@cache
def _byte_level_alphabet() -> dict[str, int]:
    """The printable character that byte-level BPE uses for each byte (GPT-2's reversible mapping).

    Printable Latin-1 bytes map to themselves; the other 68 bytes map, in order, to code points 256, 257, ...
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping: dict[str, int] = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            mapping[chr(256 + extra)] = b
            extra += 1
    return mapping


class BPETokenizer:
    """A byte-level BPE tokenizer (the ``tokenizers`` library) with ``<|endoftext|>`` as its only special token.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` with a ByteLevel pre-tokenizer and decoder.
    """

    kind = "bpe"

    def __init__(self, tokenizer: object) -> None:
        self._tok = tokenizer
        eot = self._tok.token_to_id(EOT)  # type: ignore[attr-defined]
        if eot is None:
            raise UserError(f"BPE tokenizer has no {EOT} token")
        self._eot = int(eot)

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size())  # type: ignore[attr-defined]

    @property
    def eot_id(self) -> int:
        return self._eot

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text).ids)  # type: ignore[attr-defined]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(e.ids) for e in self._tok.encode_batch(texts)]  # type: ignore[attr-defined]

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(list(ids)))  # type: ignore[attr-defined]

    def token_bytes(self) -> torch.Tensor:
        alphabet = _byte_level_alphabet()
        special = {self._eot}
        counts = torch.zeros(self.vocab_size, dtype=torch.long)
        for token, idx in self._tok.get_vocab().items():  # type: ignore[attr-defined]
            if idx not in special:
                assert all(ch in alphabet for ch in token), f"not a byte-level token: {token!r}"
                counts[idx] = len(token)  # one alphabet character per byte
        return counts

    def save(self, path: str | Path) -> None:
        self._tok.save(str(path))  # type: ignore[attr-defined]


def train_bpe(texts: list[str], *, vocab_size: int) -> BPETokenizer:
    """Train a byte-level BPE on ``texts`` (all 256 bytes are in the initial alphabet, so nothing is unknown).

    Args:
        texts: training documents.
        vocab_size: final vocabulary size including the 256 bytes and ``<|endoftext|>``.

    Returns:
        The trained tokenizer.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise UserError(f"BPE vocabulary must hold the 256 bytes and {EOT}: got {vocab_size} < 257")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(tok)


def load_tokenizer(path: str | Path) -> ByteTokenizer | BPETokenizer:
    """Load a tokenizer saved with ``save`` (a ``tokenizer.json`` of the ``tokenizers`` library, or the byte marker)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"tokenizer file not found: {path}")
    data = json.loads(path.read_text())
    if data.get("testtime_tokenizer") == "byte":
        return ByteTokenizer()
    from tokenizers import Tokenizer as HFTokenizer

    return BPETokenizer(HFTokenizer.from_file(str(path)))
