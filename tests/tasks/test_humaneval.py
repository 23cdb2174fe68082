"""HumanEval and its sandbox: gold solutions pass, wrong ones fail, hostile code is contained."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from testtime.tasks import get_task
from testtime.tasks.humaneval import build_program
from testtime.tasks.sandbox import run_python

LIMITS = {"cpu_seconds": 1, "wall_seconds": 3.0, "memory_mb": 512, "max_output_bytes": 100_000}


def test_canonical_solutions_pass_and_wrong_ones_fail() -> None:
    task = get_task("humaneval")
    assert len(task.instances(n=None)) == 164
    for instance in task.instances(seed=0, n=6):
        assert task.verify(instance, instance.reference).solved
        entry = instance.data["entry_point"]
        full = f"Here you go:\n```python\n{instance.data['prompt']}{instance.reference}```\n"
        assert task.verify(instance, full).solved  # a whole function in a fenced block
        wrong = task.verify(instance, f"```python\ndef {entry}(*args, **kwargs):\n    return None\n```")
        assert not wrong.solved and wrong.details["status"] == "failed"


def test_program_assembly() -> None:
    data = {
        "prompt": "import math\n\ndef f(x):\n",
        "test": "def check(c):\n    assert c(4) == 2\n",
        "entry_point": "f",
    }
    assert build_program(data, "    return math.isqrt(x)\n").startswith(
        "import math\n\ndef f(x):\n    return math.isqrt"
    )
    whole = build_program(data, "```python\ndef f(x):\n    return 2\n```")
    assert whole.startswith("import math\n\ndef f(x):\n    return 2") and whole.endswith("check(f)\n")
    helper = {**data, "prompt": 'import math\n\ndef g(x):\n    return x\n\ndef f(x):\n    """Doc."""\n'}
    after_prompt = build_program(helper, "```python\ndef f(x):\n    return g(2)\n```")
    assert after_prompt.startswith(helper["prompt"].rstrip() + "\n\n\ndef f(x):\n    return g(2)")


def test_sandbox_cannot_write_outside_its_directory(tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    attempts = [
        f"open({str(target)!r}, 'w').write('x')",
        f"import os\nos.open({str(target)!r}, os.O_CREAT | os.O_WRONLY)",
        f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')",
        f"import os\nos.symlink({str(tmp_path)!r}, 'link')\nopen('link/escaped.txt', 'w')",
        f"import os\nos.chdir({str(tmp_path)!r})\nopen('escaped.txt', 'w')",
        f"import shutil\nshutil.copyfile('/etc/hostname', {str(target)!r})",
        f"open('../' * 30 + {str(target)!r}.lstrip('/'), 'w')",
    ]
    for source in attempts:
        result = run_python(source, **LIMITS)
        assert result.status == "failed" and "PermissionError: sandbox" in result.stderr, source
    assert not target.exists()
    inside = run_python("open('mine.txt', 'w').write('ok')\nprint(open('mine.txt').read())", **LIMITS)
    assert inside.status == "passed" and inside.stdout == "ok\n"


def test_sandbox_blocks_processes_network_and_ctypes(tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    attempts = [
        f"import os\nos.system('touch {marker}')",
        f"import subprocess\nsubprocess.run(['touch', {str(marker)!r}])",
        "import os\nos.fork()",
        f"import os\nos.execv('/usr/bin/touch', ['touch', {str(marker)!r}])",
        "import socket\nsocket.socket()",
        "import socket\nsocket.create_connection(('127.0.0.1', 9))",
        "import ctypes",
        "import os, signal\nos.kill(os.getppid(), signal.SIGTERM)",
        "import __main__\nprint(__main__._make_hook)",  # the guard's names are gone
    ]
    for source in attempts:
        result = run_python(source, **LIMITS)
        assert result.status == "failed", source
    assert not marker.exists()
    assert os.getpid() > 0  # we are still alive


def test_humaneval_verdicts_for_hostile_answers() -> None:
    from testtime.tasks.humaneval import HumanEval

    task = HumanEval(cpu_seconds=1, wall_seconds=3.0, memory_mb=512)
    instance = task.instances(seed=0)[0]
    entry = instance.data["entry_point"]
    loop = task.verify(instance, f"```python\ndef {entry}(*a):\n    while True:\n        pass\n```")
    assert not loop.solved and "ran out of time" in loop.feedback
    bomb = task.verify(instance, f"```python\ndef {entry}(*a):\n    return bytearray(64 * 1024**3)\n```")
    assert not bomb.solved and "out of memory" in bomb.feedback
    for exit_line in ("import sys; sys.exit(0)", "import os; os._exit(0)", "raise SystemExit(0)"):
        early = task.verify(instance, f"```python\ndef {entry}(*a):\n    return None\n{exit_line}\n```")
        assert early.score == 0.0 and not early.solved, exit_line


@pytest.mark.slow
@pytest.mark.parametrize("isolation", ["bwrap", "fallback"])
def test_all_canonical_solutions_pass(isolation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from testtime.tasks.sandbox import _bwrap_works

    if isolation == "bwrap" and not _bwrap_works():
        pytest.skip("bubblewrap is not available")
    monkeypatch.setenv("TESTTIME_SANDBOX", isolation)
    task = get_task("humaneval")
    failing = [i.id for i in task.instances(n=None) if not task.verify(i, i.reference).solved]
    assert failing == []


def test_tests_see_the_prompts_helpers_and_unpatched_modules() -> None:
    """A solution redefining a helper the tests call, or patching a module they use, never passes."""
    from testtime.tasks.humaneval import HumanEval

    task = HumanEval(cpu_seconds=2, wall_seconds=6.0, memory_mb=512)
    by_id = {i.id: i for i in task.instances(seed=0)}
    identity = "    return s\n"
    hacks = {
        "redefined helper": (
            "HumanEval/38",
            "```python\ndef encode_cyclic(s):\n    return s\n\ndef decode_cyclic(s):\n    return s\n```",
        ),
        "redefined helper, completion": ("HumanEval/50", identity + "def encode_shift(s):\n    return s\n"),
        "helper and module patched": (
            "HumanEval/32",
            "    return 0.0\nimport math\nmath.fabs = lambda x: 0.0\ndef poly(xs, x):\n    return 0\n",
        ),
        "module patched during the call": (
            "HumanEval/32",
            "    import math\n    math.fabs = lambda x: 0.0\n    return 0.0\n",
        ),
        "class attribute patched": (
            "HumanEval/38",
            identity + "import random\nrandom.Random._randbelow = lambda self, n: 0\n",
        ),
        "instance attribute patched": (
            "HumanEval/38",
            identity + "import random\nrandom._inst._randbelow = lambda n: 0\n",
        ),
        "instance class swapped": (
            "HumanEval/38",
            identity
            + "import random\nclass R(random.Random):\n    def _randbelow(self, n):\n        return 0\nrandom._inst.__class__ = R\n",
        ),
        "module replaced in sys.modules": (
            "HumanEval/32",
            "    return 0.0\nimport sys, types\nfake = types.ModuleType('math')\nfake.fabs = lambda x: 0.0\n"
            "fake.pow = lambda a, b: 1.0\nsys.modules['math'] = fake\n",
        ),
        "code object swapped": (
            "HumanEval/38",
            identity + "import random\nrandom.Random.choice.__code__ = (lambda self, seq: '').__code__\n",
        ),
    }
    for label, (task_id, answer) in hacks.items():
        verdict = task.verify(by_id[task_id], answer)
        assert verdict.score == 0.0 and not verdict.solved, label
    for task_id in ("HumanEval/32", "HumanEval/33", "HumanEval/38", "HumanEval/50"):  # tests calling helpers
        assert task.verify(by_id[task_id], by_id[task_id].reference).solved, task_id


def _whole_function(instance) -> str:  # noqa: ANN001
    """The canonical solution written as the prompt asks: only the entry function, in a code block."""
    import re

    prompt, entry = instance.data["prompt"], instance.data["entry_point"]
    start = [m.start() for m in re.finditer(rf"^def\s+{re.escape(entry)}\s*\(", prompt, re.M)][-1]
    return "Here it is:\n```python\n" + prompt[start:] + instance.reference + "\n```\n"


def test_whole_functions_may_call_the_prompts_helpers() -> None:
    """decode_cyclic calling the prompt's encode_cyclic, find_zero calling poly: these failed with a
    NameError when only the prompt's imports preceded a whole function."""
    task = get_task("humaneval")
    by_id = {i.id: i for i in task.instances(seed=0)}
    for task_id in ("HumanEval/10", "HumanEval/32", "HumanEval/38", "HumanEval/50"):
        assert task.verify(by_id[task_id], _whole_function(by_id[task_id])).solved, task_id


@pytest.mark.slow
def test_all_canonical_solutions_pass_as_whole_functions() -> None:
    task = get_task("humaneval")
    failing = [i.id for i in task.instances(n=None) if not task.verify(i, _whole_function(i)).solved]
    assert failing == []


def test_answers_cannot_read_the_tests_or_the_data_set() -> None:
    """Reading tests.py and answering from its asserts, running the canonical solution from the bundled
    data set (found through sys.path), or reading the tests' constants from an audit hook of its own: each
    scored 1.0 before."""
    task = get_task("humaneval")
    by_id = {i.id: i for i in task.instances(seed=0)}
    from_tests = (
        "    import ast\n"
        "    for node in ast.walk(ast.parse(open('tests.py').read())):\n"
        "        if isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare):\n"
        "            if ast.literal_eval(node.test.left.args[0]) == string:\n"
        "                return ast.literal_eval(node.test.comparators[0])\n"
    )
    from_data = (
        "    import glob, gzip, json, sys\n"
        "    for base in sys.path:\n"
        "        for path in glob.glob(base + '/testtime/data/humaneval/*.jsonl.gz'):\n"
        "            for line in gzip.open(path, 'rt'):\n"
        "                row = json.loads(line)\n"
        "                if row['entry_point'] == 'has_close_elements':\n"
        "                    ns = {}\n"
        "                    exec(row['prompt'] + row['canonical_solution'], ns)\n"
        "                    return ns['has_close_elements'](numbers, threshold)\n"
    )
    from_package = "    from testtime.tasks.humaneval import _load\n    return bool(_load())\n"
    spy = (  # an audit hook of its own sees the tests' code object (and its constants) when they run
        "    for code in seen:\n"
        "        for const in code.co_consts:\n"
        "            if getattr(const, 'co_name', '') == 'check':\n"
        "                values = list(const.co_consts)\n"
        "                return values[values.index(string) + 1]\n"
        "import sys\nseen = []\n"
        "sys.addaudithook(lambda event, args: event == 'exec' and seen.append(args[0]))\n"
    )
    for label, task_id, answer in (
        ("tests.py", "HumanEval/23", from_tests),
        ("data set", "HumanEval/0", from_data),
        ("package", "HumanEval/0", from_package),
        ("audit hook", "HumanEval/23", spy),
    ):
        verdict = task.verify(by_id[task_id], answer)
        assert verdict.score == 0.0 and not verdict.solved, label
