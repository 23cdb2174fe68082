"""The ``testtime`` command-line tool.

Each system contributes its commands through a ``register(app)`` function in its own ``cli`` module
(``testtime.tasks.cli``, ``testtime.titans.cli``, ...), listed in ``_COMMAND_MODULES``; the top level
only wires them in and turns user errors into one clear line instead of a traceback.
"""

from __future__ import annotations

import importlib
import sys

import typer

from testtime import __version__
from testtime.errors import ModelNotFoundError, UserError

app = typer.Typer(
    name="testtime",
    help=(
        "Test-time compute systems of early 2025 on PyTorch: Titans, Mind Evolution, Transformer², "
        "DeepSeek-V3 and DeepSeek-R1. Start with `testtime demo`, a tour on the embedded SmolLM2 model."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
)

# Modules that add commands to `app`; a system's commands appear once its module exists.
_COMMAND_MODULES = (
    "testtime.demo",
    "testtime.llm.cli",
    "testtime.tasks.cli",
    "testtime.train.cli",
    "testtime.titans.cli",
    "testtime.deepseek.cli",
    "testtime.rl.cli",
    "testtime.svf.cli",
    "testtime.evolve.cli",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"testtime {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Test-time compute systems of early 2025 on PyTorch."""


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # that system has not landed (or is not installed): no commands for it
            raise
        module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors print one message and exit with status 2."""
    _register_all()
    try:
        app(args=argv, prog_name="testtime")
    except (UserError, ModelNotFoundError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)
