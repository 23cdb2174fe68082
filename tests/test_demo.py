"""The tour's collector: a failing part does not lose the others, an interrupt keeps what finished."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import typer

from testtime import demo
from testtime.demo import DemoContext, DemoPartsFailed, DemoSection
from testtime.errors import UserError


def _part(title: str, *, fails: BaseException | None = None) -> types.SimpleNamespace:
    def run(ctx: DemoContext) -> DemoSection:
        if fails is not None:
            raise fails
        return DemoSection(title=title, markdown=f"{title} body")

    return types.SimpleNamespace(run=run)


def test_a_failing_part_keeps_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = [("a", _part("A")), ("b", _part("B", fails=RuntimeError("boom"))), ("c", _part("C"))]
    monkeypatch.setattr(demo, "_available_parts", lambda: parts)
    ctx = DemoContext(out_dir=tmp_path / "run")
    with pytest.raises(DemoPartsFailed) as info:
        demo.run_demo(ctx)
    assert info.value.names == ["b"]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "A body" in report and "C body" in report and "b-error.txt" in report
    assert "RuntimeError: boom" in (tmp_path / "run" / "b-error.txt").read_text()


def test_an_interrupt_keeps_the_finished_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = [("a", _part("A")), ("b", _part("B", fails=KeyboardInterrupt())), ("c", _part("C"))]
    monkeypatch.setattr(demo, "_available_parts", lambda: parts)
    with pytest.raises(typer.Exit) as info:
        demo.run_demo(DemoContext(out_dir=tmp_path / "run"))
    assert info.value.exit_code == 130
    report = (tmp_path / "run" / "report.md").read_text()
    assert "A body" in report and "C body" not in report and "interrupted" in report


def test_a_user_error_in_a_part_is_not_swallowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        demo, "_available_parts", lambda: [("a", _part("A", fails=UserError("no such model")))]
    )
    with pytest.raises(UserError, match="no such model"):
        demo.run_demo(DemoContext(out_dir=tmp_path / "run"))


def test_an_unwritable_report_folder_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "_available_parts", lambda: [("a", _part("A"))])
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot create the report folder"):
        demo.run_demo(DemoContext(out_dir=blocker / "run"))


def test_a_missing_model_stops_the_tour(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from testtime.errors import ModelNotFoundError

    later = _part("B")
    parts = [("a", _part("A", fails=ModelNotFoundError("GGUF file not found: x.gguf"))), ("b", later)]
    monkeypatch.setattr(demo, "_available_parts", lambda: parts)
    with pytest.raises(ModelNotFoundError):
        demo.run_demo(DemoContext(out_dir=tmp_path / "run"))
