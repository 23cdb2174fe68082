"""Loggers: metrics.jsonl is always written, jsonl and TensorBoard write what they are given, wandb/trackio are lazy."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from testtime.errors import UserError
from testtime.train.loggers import make_loggers


def test_metrics_jsonl_is_always_written(tmp_path: Path) -> None:
    loggers = make_loggers([], out_dir=tmp_path, project="p", run_name="r", config={})
    loggers.log({"a": 1.0}, 1)
    loggers.close()
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["a"] == 1.0
    assert len(make_loggers(["jsonl"], out_dir=tmp_path, project="p", run_name="r", config={}).loggers) == 1
    assert (
        make_loggers(["jsonl"], out_dir=tmp_path, project="p", run_name="r", config={}, enabled=False).loggers
        == []
    )


def test_jsonl_and_tensorboard_write_scalars(tmp_path: Path) -> None:
    loggers = make_loggers(["jsonl", "tensorboard"], out_dir=tmp_path, project="p", run_name="r", config={})
    loggers.log({"train/loss": 2.5}, 3)
    loggers.log({"val/bpb": 1.25}, 4)
    loggers.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("train/loss"), r.get("val/bpb")) for r in records] == [
        (3, 2.5, None),
        (4, None, 1.25),
    ]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(3, 2.5)]


@pytest.mark.parametrize("name", ["wandb", "trackio"])
def test_wandb_like_backends_are_imported_on_use(name: str, tmp_path: Path, monkeypatch) -> None:
    calls: list[tuple] = []
    fake = types.SimpleNamespace(
        init=lambda **kw: calls.append(("init", kw)),
        log=lambda metrics, step: calls.append(("log", metrics, step)),
        finish=lambda: calls.append(("finish",)),
    )
    monkeypatch.setitem(sys.modules, name, fake)
    loggers = make_loggers([name], out_dir=tmp_path, project="proj", run_name="run", config={"lr": 1.0})
    loggers.log({"x": 1.0}, 7)
    loggers.close()
    assert calls == [
        ("init", {"project": "proj", "name": "run", "config": {"lr": 1.0}}),
        ("log", {"x": 1.0}, 7),
        ("finish",),
    ]
    monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    with pytest.raises(UserError, match=f"pip install {name}"):
        make_loggers([name], out_dir=tmp_path, project="p", run_name="r", config={})
