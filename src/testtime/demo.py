"""``testtime demo``: a tour of the five systems on the embedded model, ending in a markdown report.

Each system contributes one part: a module with ``run(ctx: DemoContext) -> DemoSection`` (the contract,
in :mod:`testtime.demo_base`) listed in ``DEMO_PARTS``. A part takes a minute or two on 2 CPU cores,
prints as it goes, and returns markdown (and PNG plots saved under ``ctx.out_dir``) for the report
written to ``runs/<timestamp>/report.md``. This module only collects the parts.
"""

from __future__ import annotations

import importlib
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from testtime.demo_base import DemoContext, DemoSection
from testtime.errors import ModelNotFoundError, UserError

__all__ = ["DEMO_PARTS", "DemoContext", "DemoPartsFailed", "DemoSection", "register", "run_demo"]

# (part name, module): a part appears in the tour once its module exists.
DEMO_PARTS: tuple[tuple[str, str], ...] = (
    ("llm", "testtime.llm.demo"),
    ("tasks", "testtime.tasks.demo"),
    ("titans", "testtime.titans.demo"),
    ("deepseek", "testtime.deepseek.demo"),
    ("evolve", "testtime.evolve.demo"),
    ("svf", "testtime.svf.demo"),
    ("r1", "testtime.rl.demo"),
)


def _available_parts() -> list[tuple[str, Any]]:
    parts = []
    for name, module_name in DEMO_PARTS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module_name.startswith(exc.name):
                continue
            raise
        parts.append((name, module))
    return parts


def run_demo(ctx: DemoContext, *, only: list[str] | None = None) -> Path:
    """Run the tour's parts in order and write the report.

    Args:
        ctx: the demo context.
        only: run only these parts (by name); None runs all available parts.

    Returns:
        The path of the markdown report.
    """
    parts = _available_parts()
    names = [name for name, _ in parts]
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise UserError(f"--only: unknown demo part(s) {unknown}; available: {names}")
        parts = [(name, module) for name, module in parts if name in only]
    try:
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the report folder {ctx.out_dir}: {exc.strerror or exc}") from None
    report = ctx.out_dir / "report.md"
    sections: list[tuple[str, DemoSection | None, float]] = []
    failed: list[str] = []
    try:
        for index, (name, module) in enumerate(parts, 1):
            typer.secho(f"\n== [{index}/{len(parts)}] {name} ==", bold=True)
            start = time.perf_counter()
            try:
                section = module.run(ctx)
            except (UserError, ModelNotFoundError, KeyboardInterrupt):  # the user's to fix: stop
                raise
            except Exception as exc:  # one part's failure must not lose the others' results
                log = ctx.out_dir / f"{name}-error.txt"
                log.write_text(traceback.format_exc())
                typer.secho(
                    f"part {name!r} failed: {type(exc).__name__}: {exc} (traceback in {log})", fg="red"
                )
                failed.append(name)
                section = None
            sections.append((name, section, time.perf_counter() - start))
            _write_report(report, ctx, sections)  # after every part: an interrupted tour keeps what ran
    except KeyboardInterrupt:
        _write_report(report, ctx, sections, interrupted=True)
        typer.secho(f"\ninterrupted; the parts that finished are in {report}", fg="yellow")
        raise typer.Exit(130) from None
    _write_report(report, ctx, sections)
    if failed:
        typer.secho(f"\nreport: {report}", fg=typer.colors.GREEN)
        raise DemoPartsFailed(failed)
    return report


class DemoPartsFailed(Exception):
    """Some parts of the tour raised; the report holds the others and names these."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(f"demo part(s) failed: {', '.join(names)}")
        self.names = names


def _write_report(
    report: Path,
    ctx: DemoContext,
    sections: list[tuple[str, DemoSection | None, float]],
    *,
    interrupted: bool = False,
) -> None:
    lines = [
        "# testtime demo",
        "",
        f"Run at {datetime.now().isoformat(timespec='seconds')}, model `{ctx.model_name or 'smollm2 (embedded)'}`, "
        f"seed {ctx.seed}.",
        "",
    ]
    for name, section, seconds in sections:
        if section is None:
            lines += [f"## {name}", "", f"_failed after {seconds:.1f} s: see `{name}-error.txt`_", ""]
            continue
        lines += [f"## {section.title}", "", f"_{seconds:.1f} s_", "", section.markdown.rstrip(), ""]
        lines += [f"![{fig.stem}]({fig.name})" for fig in section.figures]
        lines.append("")
    if interrupted:
        lines += ["_The tour was interrupted; the parts above finished._", ""]
    tmp = report.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(report)


def register(app: typer.Typer) -> None:
    """Add ``testtime demo`` to the CLI."""

    @app.command("demo")
    def demo(
        model: str = typer.Option(
            "smollm2",
            "--model",
            "-m",
            help="Model: 'smollm2' (embedded), a .gguf file, a local directory or a transformers hub id.",
        ),
        out: Path = typer.Option(
            Path("runs"), "--out", "-o", help="Reports go to OUT/<timestamp>/report.md."
        ),
        seed: int = typer.Option(
            0, "--seed", min=0, max=2**32 - 1, help="Seed for everything random in the demo."
        ),
        only: list[str] = typer.Option(
            None,
            "--only",
            help=f"Run only this part (repeatable); parts: {', '.join(n for n, _ in DEMO_PARTS)}.",
        ),
        quick: bool = typer.Option(False, "--quick", help="Shorten every part (a smoke test)."),
    ) -> None:
        """Tour the systems on the embedded model (offline, a few minutes on 2 cores) and write a report.

        Loads the embedded SmolLM2-135M-Instruct, answers a few prompts with timings, then runs each
        system's part that is installed, and writes runs/<timestamp>/report.md with plots.
        """
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        ctx = DemoContext(out_dir=out / stamp, model_name=model, seed=seed, quick=quick)
        from testtime.llm.loading import resolve_model

        resolve_model(model)  # a missing model is one line now, not after the parts that need none
        try:
            report = run_demo(ctx, only=only or None)
        except DemoPartsFailed as exc:
            typer.secho(str(exc), fg="red", err=True)
            raise typer.Exit(1) from None
        typer.secho(f"\nreport: {report}", fg=typer.colors.GREEN)
