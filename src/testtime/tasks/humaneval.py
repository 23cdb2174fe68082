"""HumanEval (Chen et al. 2021): complete a Python function; scored by running its tests in a sandbox.

The answer is either a completion of the prompt (the function body, as the benchmark expects) or a whole
function definition, optionally inside a fenced code block. The solution (``prompt + completion``, or the
prompt + the whole function, which replaces the prompt's stub) and then the benchmark's tests run in
:func:`testtime.tasks.sandbox.run_tests` (bubblewrap where available), never in the library's process;
the tests see pristine builtins and the function's results must be plain data. Score 1.0 only when the
harness proves ``check`` returned (an early ``sys.exit(0)`` does not pass), else 0.0; the feedback carries the last lines of the error (assertion, exception, timeout or memory).
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from testtime.tasks.base import Instance, Task, Verdict, seeded_subset
from testtime.tasks.parsing import strip_thinking
from testtime.tasks.sandbox import run_tests

__all__ = ["HumanEval", "build_program", "build_solution", "hidden_paths"]

_FENCE = re.compile(r"```(?:python|py|Python)?[ \t]*\n(.*?)```", re.DOTALL)


@functools.lru_cache(maxsize=1)
def _load() -> tuple[dict[str, Any], ...]:
    path = resources.files("testtime") / "data" / "humaneval" / "HumanEval.jsonl.gz"
    with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
        return tuple(json.loads(line) for line in lines if line.strip())


@functools.lru_cache(maxsize=256)
def _compiles(source: str) -> bool:
    try:
        compile(source, "<prompt>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return False
    return True


def hidden_paths() -> list[str]:
    """What answer code must not read: this package (its copy of the data set holds the canonical
    solutions and tests), the ``.git`` of a source checkout it lives in, and the paths in
    ``TESTTIME_SANDBOX_HIDE`` (separated by ``os.pathsep``; other copies of HumanEval on the machine)."""
    package = Path(str(resources.files("testtime")))
    paths = [str(package)] + [str(p / ".git") for p in package.parents[:2] if (p / ".git").exists()]
    extra = os.environ.get("TESTTIME_SANDBOX_HIDE", "")
    return paths + [p for p in extra.split(os.pathsep) if p.strip()]


def build_solution(data: Mapping[str, Any], answer: str) -> str:
    """The solution's source for an answer: the prompt plus the completion, or the prompt followed by a
    whole function, which replaces the prompt's stub (the tests run separately, see
    :func:`testtime.tasks.sandbox.run_tests`)."""
    text = strip_thinking(answer if isinstance(answer, str) else "")
    blocks = _FENCE.findall(text)
    entry = data["entry_point"]
    if blocks:
        with_def = [b for b in blocks if re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", b, re.M)]
        code = (with_def or blocks)[0]
    else:
        code = text
    if re.search(rf"^def\s+{re.escape(entry)}\s*\(", code, re.M):  # a whole function (top level)
        # after the whole prompt, so the helpers it defines (encode_cyclic, poly) exist; the answer's
        # definition replaces the prompt's stub (a prompt that is not a program alone: its imports only)
        prompt = data["prompt"]
        if _compiles(prompt):
            body = prompt.rstrip() + "\n\n\n" + code
        else:
            imports = "\n".join(line for line in prompt.splitlines() if line.startswith(("import ", "from ")))
            body = imports + "\n\n" + code
    else:
        body = data["prompt"] + code
    return body + "\n"


def build_program(data: Mapping[str, Any], answer: str) -> str:
    """One program with the solution, the benchmark's tests and the check call (for reading; the verifier
    runs solution and tests separately)."""
    return f"{build_solution(data, answer)}\n{data['test']}\n\ncheck({data['entry_point']})\n"


class HumanEval(Task):
    """HumanEval's 164 problems; tests run in a sandboxed subprocess."""

    name = "humaneval"
    description = "HumanEval Python function completion (164 problems), tests run in a sandbox"
    numeric = False  # code: leave every character as written
    splits = ("test",)

    def __init__(self, *, cpu_seconds: int = 5, wall_seconds: float = 10.0, memory_mb: int = 1024) -> None:
        self.limits = {"cpu_seconds": cpu_seconds, "wall_seconds": wall_seconds, "memory_mb": memory_mb}

    def _instances(
        self, *, split: str, seed: int, n: int | None, difficulty: Mapping[str, int]
    ) -> list[Instance]:
        rows = _load()
        out = []
        for i in seeded_subset(len(rows), seed, n):
            row = rows[i]
            data = {k: row[k] for k in ("task_id", "prompt", "test", "entry_point")}
            out.append(
                Instance(task=self.name, id=row["task_id"], data=data, reference=row["canonical_solution"])
            )
        return out

    def prompt(self, instance: Instance) -> str:
        return (
            "Complete the following Python function. Answer with the complete function in one ```python "
            f"code block.\n\n```python\n{instance.data['prompt']}```"
        )

    def verify(self, instance: Instance, answer: str) -> Verdict:
        data = instance.data
        solution = build_solution(data, answer)
        result = run_tests(
            solution,
            data["test"],
            data["entry_point"],
            context=data["prompt"],
            hide=hidden_paths(),
            **self.limits,
        )
        if result.status == "passed":
            return Verdict(
                score=1.0, solved=True, feedback="All tests pass.", details={"status": result.status}
            )
        tail = "\n".join(result.stderr.strip().splitlines()[-4:])[-600:]
        reason = {
            "timeout": "The program ran out of time (infinite loop or too slow).",
            "memory": "The program ran out of memory.",
            "output_limit": "The program wrote too much output.",
        }.get(result.status, "The tests fail.")
        return Verdict(
            score=0.0,
            solved=False,
            feedback=f"{reason}\n{tail}".strip(),
            details={"status": result.status, "returncode": result.returncode},
        )
