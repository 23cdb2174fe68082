"""The loop's pieces against hand computations, and a plugged-in model's contract (metrics, hook)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from testtime.nn import YarnConfig
from testtime.train.data import PackedSequences
from testtime.train.distributed import DistInfo
from testtime.train.loop import bits_per_byte, evaluate, lr_at, train
from testtime.train.registry import LMOutput, get_model_spec, register_model, resolve_model_config
from testtime.train.tokenizer import ByteTokenizer

CPU = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def test_lr_schedule_warmup_then_cosine() -> None:
    kw = dict(lr=1.0, warmup_steps=4, max_steps=14, min_lr_ratio=0.1)
    assert [lr_at(s, **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, **kw) == 1.0
    assert lr_at(9, **kw) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert lr_at(14, **kw) == pytest.approx(0.1)
    assert lr_at(100, **kw) == pytest.approx(0.1)
    assert lr_at(0, lr=2.0, warmup_steps=0, max_steps=10, min_lr_ratio=0.0) == 2.0


class _Uniform(nn.Module):
    """Zero logits: every next token has probability 1/V."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        return {"logits": torch.zeros(*input_ids.shape, self.vocab) + 0 * self.dummy}


def test_evaluate_uniform_model_gives_log2_vocab_bits_per_byte() -> None:
    tok = ByteTokenizer()
    tokens = torch.tensor(tok.encode("some text\n" * 30) + [tok.eot_id] + tok.encode("more"))
    data = PackedSequences(tokens, 16)
    bpb = evaluate(_Uniform(257), data, tok.token_bytes(), num_sequences=100, micro_batch_size=3, info=CPU)
    # every byte target costs ln(257) nats; the <|endoftext|> target is excluded from both sums
    assert bpb == pytest.approx(math.log2(257), rel=1e-6)  # float32 logits; one extra target would be 3e-3
    assert bits_per_byte(torch.tensor([math.log(2) * 6]), torch.tensor([3])) == pytest.approx(2.0)


@dataclass(kw_only=True)
class BigramConfig:
    scale: float = 1.0  # multiplies the logits


class Bigram(nn.Module):
    """A next-token table with an extra metric and an after-step hook, to test the contract."""

    def __init__(self, config: BigramConfig, vocab_size: int) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab_size, vocab_size)
        self.scale = config.scale
        self.hook_calls = 0

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> LMOutput:
        logits = self.table(input_ids) * self.scale
        loss = None if labels is None else nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return LMOutput(logits=logits, loss=loss, metrics={"const": 2.5, "mean_logit": logits.mean()})

    def after_optimizer_step(self) -> None:
        self.hook_calls += 1


def test_registered_model_trains_logs_metrics_and_gets_hook_calls(tiny_config, monkeypatch) -> None:
    built: list[Bigram] = []

    def build(config: BigramConfig, vocab_size: int) -> Bigram:
        built.append(Bigram(config, vocab_size))
        return built[-1]

    register_model("test-bigram", config_cls=BigramConfig, build=build, presets={"tiny": BigramConfig})
    assert get_model_spec("test-bigram").default_preset == "tiny"
    cfg = tiny_config(
        model="test-bigram", model_config={"scale": 2.0}, max_steps=5, loggers=["jsonl"], lr=0.05
    )
    result = train(cfg)
    (model,) = built
    assert model.hook_calls == 5 and model.scale == 2.0
    records = [json.loads(line) for line in (result.out_dir / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train_records] == [1, 2, 3, 4, 5]
    assert all(r["train/const"] == 2.5 for r in train_records)
    assert result.losses[5] < result.losses[1]
    assert sorted(result.evals) == [2, 4, 5] and result.evals[5] < result.evals[2]


def test_transformer_loss_decreases_on_shakespeare(tiny_config) -> None:
    result = train(tiny_config(max_steps=25, lr=1e-2, eval_every=0, log_every=5))
    assert result.losses[25] < result.losses[5] - 0.5
    assert result.losses[5] < math.log(257)
    assert result.checkpoint is not None and (result.checkpoint / "model.safetensors").is_file()


def test_gradient_accumulation_matches_one_big_micro_batch(tiny_config, tmp_path) -> None:
    accumulated = train(tiny_config(micro_batch_size=1, out_dir=str(tmp_path / "a"), eval_every=0))
    whole = train(tiny_config(micro_batch_size=4, out_dir=str(tmp_path / "b"), eval_every=0))
    assert accumulated.losses.keys() == whole.losses.keys()
    for step in whole.losses:
        assert accumulated.losses[step] == pytest.approx(whole.losses[step], rel=1e-5)
    assert accumulated.evals[4] == pytest.approx(whole.evals[4], rel=1e-5)


def test_bfloat16_autocast_trains(tiny_config) -> None:
    result = train(tiny_config(dtype="bfloat16", max_steps=3, eval_every=0))
    assert all(math.isfinite(v) for v in result.losses.values())
    assert math.isfinite(result.evals[3])


@pytest.mark.slow
def test_compiled_model_matches_eager(tiny_config, tmp_path) -> None:
    eager = train(tiny_config(max_steps=3, eval_every=0, out_dir=str(tmp_path / "eager")))
    compiled = train(tiny_config(max_steps=3, eval_every=0, compile=True, out_dir=str(tmp_path / "compiled")))
    for step, loss in eager.losses.items():
        assert compiled.losses[step] == pytest.approx(loss, rel=1e-4)


def test_nested_dataclass_fields_survive_the_saved_config() -> None:
    @dataclass(kw_only=True)
    class WithYarn:
        dim: int = 8
        yarn: YarnConfig | None = None  # a nested config, written as a mapping in config.yaml

    spec = register_model(
        "test-nested", config_cls=WithYarn, build=lambda c, v: nn.Linear(1, 1), presets={"p": WithYarn}
    )
    config = resolve_model_config(
        spec, None, {"yarn": {"factor": 4.0, "original_max_position_embeddings": 64}}
    )
    assert config.yarn == YarnConfig(factor=4.0, original_max_position_embeddings=64)
    again = resolve_model_config(
        spec, None, {"yarn": {"factor": 2.0, "original_max_position_embeddings": 64}, "dim": 4}
    )
    assert again.yarn.factor == 2.0 and again.dim == 4
