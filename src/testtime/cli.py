"""The ``testtime`` command-line tool.

Each system contributes its commands through a ``register(app)`` function in its own ``cli`` module
(``testtime.tasks.cli``, ``testtime.titans.cli``, ...). The top level imports none of them up front:
:data:`COMMANDS` maps each top-level command name to the module that registers it and a one-line help,
so ``testtime --help`` lists them without importing torch, and a command's module is imported only when
that command runs (or its own ``--help`` is asked for). A system joins the tool with one line in
:data:`COMMANDS`; commands whose module is absent are not listed.

User errors (:class:`testtime.errors.UserError`, ``ModelNotFoundError``) and click's usage errors (a
value out of range, an unknown option, a missing argument) become one line on stderr and exit status 2,
whether the tool runs from the shell or in-process through typer's ``CliRunner``.
The shared flag vocabulary is written down in docs/cli.md.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from testtime import __version__
from testtime.errors import ModelNotFoundError, UserError

__all__ = ["COMMANDS", "app", "load_command", "main"]

# Top-level command -> (module whose register(app) adds it, one-line help shown by `testtime --help`).
# Add one line here for a new system; its module needs `register(app: typer.Typer)`.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("testtime.demo", "A tour of every system on the embedded SmolLM2 model."),
    "llm": ("testtime.llm.cli", "Generate with a local causal LM (GGUF or transformers folder)."),
    "serve": ("testtime.llm.cli", "Serve a local model over an OpenAI-compatible HTTP API."),
    "tasks": ("testtime.tasks.cli", "List, show and check the verifiable tasks."),
    "lm": ("testtime.train.cli", "Train, evaluate, sample and export small language models."),
    "titans": ("testtime.titans.cli", "Titans: neural memory that learns at test time."),
    "deepseek": ("testtime.deepseek.cli", "DeepSeek-V3: MLA, DeepSeekMoE, MTP; train and generate."),
    "r1": ("testtime.rl.cli", "DeepSeek-R1: GRPO with rule-based rewards."),
    "svf": ("testtime.svf.cli", "Transformer²: singular-value fine-tuning and self-adaptation."),
    "evolve": ("testtime.evolve.cli", "Mind Evolution: evolutionary search over LLM answers."),
}

# Kept for code that iterates the modules (the order in which they register).
_COMMAND_MODULES = tuple(dict.fromkeys(module for module, _ in COMMANDS.values()))


def _module_exists(name: str) -> bool:
    """Whether module ``name`` is installed, without importing it (nor, for a submodule, its package)."""
    top, _, rest = name.partition(".")
    if top != "testtime":
        return importlib.util.find_spec(name) is not None
    base = Path(__file__).parent.joinpath(*rest.split(".")) if rest else Path(__file__).parent
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


_loaded: dict[str, Any] = {}  # module name -> the click group of everything its register(app) added


def _load_module(name: str) -> Any:
    """Import ``name``, let it register on a fresh typer app, and return that app as a click group."""
    if name not in _loaded:
        module = importlib.import_module(name)
        sub = typer.Typer(pretty_exceptions_enable=False)
        module.register(sub)
        _loaded[name] = typer.main.get_group(sub)
    return _loaded[name]


def load_command(name: str) -> Any:
    """The real click command behind top-level command ``name`` (imports its module), or None."""
    if name in COMMANDS and _module_exists(COMMANDS[name][0]):
        return _load_module(COMMANDS[name][0]).commands.get(name)
    return None


class _LazyCommand(typer.core.TyperCommand):
    """Stands for a command in the listing; parsing its arguments loads the real command."""

    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name=name, help=help_text, short_help=help_text)

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        real = load_command(self.name or "")
        if real is None:  # the module loaded but did not register this name
            raise UserError(f"command {self.name!r} is not available in this installation")
        return real.make_context(info_name, args, parent=parent, **extra)


_clicks = typer.core._click.exceptions  # typer's own click (not the click package)


def _non_finite_input(exc: Any) -> str | None:
    """The NaN or infinite value behind a range error, if that is what failed (typer checks a number's
    range before any callback, and a NaN fails it with a message that names a bound)."""
    errors = getattr(exc.__cause__, "errors", None)
    if not callable(errors):
        return None
    try:
        items = errors()
    except Exception:  # not a pydantic error after all
        return None
    for item in items:
        raw = item.get("input") if isinstance(item, dict) else None
        if isinstance(raw, bool) or raw is None:
            continue
        try:
            number = float(raw)
        except (TypeError, ValueError, OverflowError):
            continue
        if not math.isfinite(number):
            return str(raw)
    return None


def usage_line(exc: Any) -> str:
    """A usage error (bad value, unknown option, missing argument) as one line naming the command's help."""
    raw = _non_finite_input(exc)
    if raw is not None and hasattr(exc, "message"):
        exc.message = f"{raw} is not a finite number"
    message = " ".join(line.strip() for line in exc.format_message().splitlines() if line.strip())
    if exc.ctx is not None:
        message += f" (see '{exc.ctx.command_path} --help')"
    return message


class LazyGroup(TyperGroup):
    """The root group: commands of :data:`COMMANDS` load on demand; user errors become exit status 2."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _clicks.NoArgsIsHelpError:
            raise
        except _clicks.UsageError as exc:  # a bad root option (`testtime --bogus`): one line too
            typer.secho(f"error: {usage_line(exc)}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None

    def list_commands(self, ctx: Any) -> list[str]:
        names = list(self.commands)
        names += [n for n, (module, _) in COMMANDS.items() if n not in names and _module_exists(module)]
        return names

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        if cmd_name in COMMANDS and _module_exists(COMMANDS[cmd_name][0]):
            return _LazyCommand(cmd_name, COMMANDS[cmd_name][1])
        return None

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except _clicks.UsageError as exc:  # "did you mean" over the lazy names too
            if args and "Did you mean" not in exc.message:
                import difflib

                close = difflib.get_close_matches(args[0], self.list_commands(ctx))
                if close:
                    exc.message = exc.message.rstrip(".") + f". Did you mean {close[0]!r}?"
            raise

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _clicks.NoArgsIsHelpError:
            raise  # a group run bare prints its help
        except _clicks.UsageError as exc:  # a bad flag or value: one line, like a UserError (not typer's box)
            typer.secho(f"error: {usage_line(exc)}", fg=typer.colors.RED, err=True)
            ctx.exit(2)
        except (UserError, ModelNotFoundError) as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            typer.secho("interrupted", err=True)
            ctx.exit(130)


app = typer.Typer(
    name="testtime",
    cls=LazyGroup,
    help=(
        "Test-time compute systems of early 2025 on PyTorch: Titans, Mind Evolution, Transformer², "
        "DeepSeek-V3 and DeepSeek-R1. Start with `testtime demo`, a tour on the embedded SmolLM2 model. "
        "docs/cli.md walks through train, eval, sample, export and serve."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
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
    """Register every available module's commands on ``app`` eagerly (for code that needs them all)."""
    for name in _COMMAND_MODULES:
        if not _module_exists(name):
            continue  # that system has not landed (or is not installed): no commands for it
        module = importlib.import_module(name)
        module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors print one message and exit with status 2."""
    run: Callable[..., Any] = app
    try:
        run(args=argv, prog_name="testtime")
    except (UserError, ModelNotFoundError) as exc:  # raised outside a command (e.g. while parsing)
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)
