"""``testtime demo``: a tour of the five systems on the embedded model, ending in a markdown report.

Each system contributes one part: a module with ``run(ctx: DemoContext) -> DemoSection`` (the contract,
in :mod:`testtime.demo_base`) listed in ``DEMO_PARTS``. A part takes a minute or two on 2 CPU cores,
prints as it goes, and returns markdown (and PNG plots saved under ``ctx.out_dir``) for the report
written to ``runs/<timestamp>/report.md``. This module only collects the parts.
"""

from __future__ import annotations

import importlib
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from testtime.demo_base import DemoContext, DemoSection
from testtime.errors import UserError

__all__ = ["DEMO_PARTS", "DemoContext", "DemoSection", "register", "run_demo"]

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
            raise UserError(f"unknown demo part(s) {unknown}; available: {names}")
        parts = [(name, module) for name, module in parts if name in only]
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    sections: list[tuple[DemoSection, float]] = []
    for index, (name, module) in enumerate(parts, 1):
        typer.secho(f"\n== [{index}/{len(parts)}] {name} ==", bold=True)
        start = time.perf_counter()
        section = module.run(ctx)
        sections.append((section, time.perf_counter() - start))
    lines = [
        "# testtime demo",
        "",
        f"Run at {datetime.now().isoformat(timespec='seconds')}, model `{ctx.model_name or 'smollm2 (embedded)'}`, "
        f"seed {ctx.seed}.",
        "",
    ]
    for section, seconds in sections:
        lines += [f"## {section.title}", "", f"_{seconds:.1f} s_", "", section.markdown.rstrip(), ""]
        lines += [f"![{fig.stem}]({fig.name})" for fig in section.figures]
        lines.append("")
    report = ctx.out_dir / "report.md"
    report.write_text("\n".join(lines))
    return report


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
        out: Path = typer.Option(Path("runs"), "--out", help="Reports go to OUT/<timestamp>/report.md."),
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
        report = run_demo(ctx, only=only or None)
        typer.secho(f"\nreport: {report}", fg=typer.colors.GREEN)
