"""Tokenizers, corpora, the split by document, packing and the sample order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from testtime.errors import UserError
from testtime.train.data import (
    Document,
    PackedSequences,
    SampleOrder,
    load_documents,
    shakespeare_documents,
    split_documents,
    stdlib_documents,
    tokenize_documents,
)
from testtime.train.tokenizer import ByteTokenizer, load_tokenizer, train_bpe

TEXT = "Héllo wörld — ünïcödé ✓ and plain ASCII.\n\tTabs, 数字 123."


def test_byte_tokenizer_round_trip_and_byte_counts(tmp_path: Path) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(TEXT)
    assert ids == list(TEXT.encode("utf-8"))
    assert tok.decode([*ids, tok.eot_id]) == TEXT
    counts = tok.token_bytes()
    assert counts.shape == (257,) and counts[:256].eq(1).all() and counts[256] == 0
    tok.save(tmp_path / "t.json")
    assert isinstance(load_tokenizer(tmp_path / "t.json"), ByteTokenizer)


def test_bpe_round_trip_compresses_and_counts_bytes_exactly(tmp_path: Path) -> None:
    docs = [d.text for d in shakespeare_documents()[:5]]
    tok = train_bpe(docs, vocab_size=400)
    assert tok.vocab_size == 400
    for text in (TEXT, docs[0][:2000]):
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        # the byte lengths of the ids add up to the UTF-8 length of the text
        assert int(tok.token_bytes()[torch.tensor(ids)].sum()) == len(text.encode("utf-8"))
    assert len(tok.encode(docs[0])) < 0.6 * len(docs[0].encode("utf-8"))  # merges learned
    assert tok.token_bytes()[tok.eot_id] == 0
    tok.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert again.encode(TEXT) == tok.encode(TEXT) and again.eot_id == tok.eot_id


def test_shakespeare_documents_reassemble_the_corpus() -> None:
    docs = shakespeare_documents()
    assert 80 < len(docs) < 150
    original = Path(__file__).parents[2].joinpath("src/testtime/data/tinyshakespeare/input.txt").read_text()
    assert "".join(d.text for d in docs) == original
    assert len({d.name for d in docs}) == len(docs)


def test_stdlib_and_user_path_sources(tmp_path: Path) -> None:
    docs = stdlib_documents()
    names = {d.name for d in docs}
    assert "stdlib/os.py" in names and "stdlib/json/__init__.py" in names
    assert not any("site-packages" in n for n in names)
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("second")
    (tmp_path / "blob.bin").write_bytes(b"\xff\xfe\x00")  # not text: skipped
    got = load_documents([str(tmp_path), str(tmp_path / "a.txt")])
    assert [d.text for d in got] == ["first", "second", "first"]
    limited = load_documents(["shakespeare"], max_bytes=25_000)
    assert 2 <= len(limited) <= 4
    with pytest.raises(UserError, match="unknown corpus"):
        load_documents(["no-such-corpus"])


def test_split_is_by_document_deterministic_and_order_independent() -> None:
    docs = [Document(f"d{i}", f"text {i}") for i in range(50)]
    train, val = split_documents(docs, val_fraction=0.2, seed=0)
    assert len(val) == 10 and len(train) == 40
    assert {d.name for d in train}.isdisjoint(d.name for d in val)
    train2, val2 = split_documents(list(reversed(docs)), val_fraction=0.2, seed=0)
    assert {d.name for d in val2} == {d.name for d in val}
    _, val3 = split_documents(docs, val_fraction=0.2, seed=1)
    assert {d.name for d in val3} != {d.name for d in val}
    assert split_documents(docs, val_fraction=0.0, seed=0)[1] == []
    with pytest.raises(UserError):
        split_documents(docs[:1], val_fraction=0.1)
    with pytest.raises(UserError, match="repeated: d3"):
        split_documents([*docs, Document("d3", "again")], val_fraction=0.2)


def test_packing_shifts_labels_and_separates_documents() -> None:
    tok = ByteTokenizer()
    tokens = tokenize_documents(tok, [Document("a", "abc"), Document("b", "de")])
    assert tokens.tolist() == [97, 98, 99, 256, 100, 101, 256]
    packed = PackedSequences(tokens, seq_len=3)
    assert len(packed) == 2  # windows [0:4] and [3:7]
    x, y = packed.batch(torch.tensor([1, 0]))
    assert x.tolist() == [[256, 100, 101], [97, 98, 99]]
    assert y.tolist() == [[100, 101, 256], [98, 99, 256]]


def test_sample_order_is_a_seeded_permutation_per_epoch() -> None:
    order = SampleOrder(10, seed=3)
    first, second = order.indices(0, 10), order.indices(10, 10)
    assert sorted(first.tolist()) == list(range(10)) and sorted(second.tolist()) == list(range(10))
    assert not torch.equal(first, second)
    # a pure function of the position: any chunking and a fresh object agree
    assert torch.equal(torch.cat([order.indices(0, 7), order.indices(7, 13)]), torch.cat([first, second]))
    assert torch.equal(SampleOrder(10, seed=3).indices(13, 4), second[3:7])
    assert not torch.equal(SampleOrder(10, seed=4).indices(0, 10), first)


def test_an_empty_training_set_is_a_user_error() -> None:
    with pytest.raises(UserError, match="no training sequence"):
        SampleOrder(0, seed=0)
