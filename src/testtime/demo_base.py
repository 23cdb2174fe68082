"""The contract between ``testtime demo`` and each system's demo part (a module at the bottom of the package).

A system's demo is a module with ``run(ctx: DemoContext) -> DemoSection``; :mod:`testtime.demo` only
collects the parts listed in its ``DEMO_PARTS`` and writes the report. Parts import this module, never
:mod:`testtime.demo`, so the tour's collector sits above every system and nothing points up to it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

__all__ = ["DemoContext", "DemoSection"]


@dataclass(kw_only=True)
class DemoSection:
    """One part's contribution to the report.

    Attributes:
        title: the section heading.
        markdown: the section body (may reference figures by file name).
        figures: PNG files written under the run directory.
    """

    title: str
    markdown: str
    figures: list[Path] = field(default_factory=list)


@dataclass(kw_only=True)
class DemoContext:
    """What every demo part gets: where to write, which model, a seed, and the shared loaded model.

    Attributes:
        out_dir: the run directory (``runs/<timestamp>``).
        model_name: the model to use (None: the embedded SmolLM2).
        seed: the seed for everything random in the demo.
        quick: shorten every part (used by the tests).
    """

    out_dir: Path
    model_name: str | None = None
    seed: int = 0
    quick: bool = False
    _model: Any = None
    _tokenizer: Any = None
    _llm: Any = None

    def model_and_tokenizer(self) -> tuple[Any, Any]:
        """The demo's language model, loaded once and shared by all parts."""
        if self._model is None:
            from testtime.llm.loading import load_model

            start = time.perf_counter()
            self._model, self._tokenizer = load_model(self.model_name)
            typer.echo(f"loaded model in {time.perf_counter() - start:.1f} s")
        return self._model, self._tokenizer

    def llm(self) -> Any:
        """The demo's model behind the local engine (:class:`testtime.llm.local.LocalLLM`), built once.

        On cores oversubscribed by other work the engine runs one thread, which is then far faster than
        two (see docs/benchmarks/generate.md).
        """
        if self._llm is None:
            import os

            from testtime.llm.local import LocalLLM

            model, tokenizer = self.model_and_tokenizer()
            busy = hasattr(os, "getloadavg") and os.getloadavg()[0] > (os.cpu_count() or 1)
            if busy:
                typer.echo(
                    f"load average {os.getloadavg()[0]:.1f} > {os.cpu_count()} CPUs: the engine uses 1 thread"
                )
            self._llm = LocalLLM(
                model, tokenizer, name=self.model_name or "smollm2", num_threads=1 if busy else None
            )
            start = time.perf_counter()
            self._llm.engine.prepare()
            typer.echo(f"engine weights fused and packed in {time.perf_counter() - start:.1f} s")
        return self._llm
