"""docs/cli.md's walk-through, run as written: train -> eval -> sample -> export -> llm generate -> serve.

The commands are read from the ``console`` blocks of each family's section (so the page and the test
cannot drift apart) and run from an empty folder: ``testtime ...`` lines in-process with typer's runner,
``serve ... &`` as a real server process on a free port, ``curl`` lines as the same HTTP request. Besides
exit status 0 and no traceback, the test checks that the exported model answers like the run it came from:
the greedy text of ``lm sample`` / ``deepseek generate`` is the text of ``llm generate --model EXPORT``
and of the server.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
PROMPT = "The king"  # the walk's prompt everywhere
FAMILIES = ("lm", "titans", "deepseek")


def walk(family: str) -> list[str]:
    """The ``$ `` lines of the console blocks in docs/cli.md's section ``### {family}: ...``."""
    text = DOC.read_text()
    start = text.index(f"\n### {family}:")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    section = section[: section.find("\n### ", 1)] if section.find("\n### ", 1) != -1 else section
    commands = []
    for block in re.findall(r"```console\n(.*?)```", section, flags=re.S):
        commands += [line[2:] for line in block.splitlines() if line.startswith("$ ")]
    return commands


def test_every_family_has_a_walk_that_reaches_export_and_serve() -> None:
    for family in FAMILIES:
        commands = walk(family)
        steps = [c.split()[2] if c.startswith("testtime") else c.split()[0] for c in commands]
        assert "train" in steps and "eval" in steps, family
        if family != "titans":  # transformers has no Titans architecture (docs say so)
            assert {"export", "generate", "--model"} & set(steps) and any(s.startswith("curl") for s in steps)
            assert any(c.startswith("testtime serve") for c in commands)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(args: list[str], port: int, cwd: Path) -> subprocess.Popen:
    args = [str(port) if a == "8000" else a for a in args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "testtime", *args[1:], "--threads", "1"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"serve exited: {server.stdout.read() if server.stdout else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5):
                return server
        except OSError:
            time.sleep(1)
    server.kill()
    raise AssertionError("serve did not answer within 300 s")


def _curl(args: list[str], port: int) -> dict:
    url = next(a for a in args if a.startswith(("localhost", "http")))
    url = "http://" + url.removeprefix("http://").replace("localhost:8000", f"127.0.0.1:{port}")
    body = args[args.index("-d") + 1].encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as reply:
        return json.loads(reply.read())


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_the_documented_walk_runs(family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    import transformers

    from testtime.cli import app

    # imported here, transformers' log handler writes to the real stderr, not to one invocation's capture
    # (which the runner closes); its load report on the exported DeepSeek MTP layer is expected (docs)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    runner = CliRunner()
    greedy: dict[str, str] = {}  # which command -> its greedy continuation of the prompt
    server: subprocess.Popen | None = None
    port = _free_port()
    try:
        for line in walk(family):
            args = shlex.split(line.removesuffix("&").strip())
            if line.endswith("&"):
                server = _serve(args, port, tmp_path)
                continue
            if args[0] == "curl":
                assert server is not None, "curl before serve"
                greedy["serve"] = _curl(args, port)["choices"][0]["text"]
                continue
            assert args[0] == "testtime", line
            result = runner.invoke(app, args[1:])
            assert result.exit_code == 0, f"{line}\n{result.output}"
            assert "Traceback" not in result.output, line
            out = result.stdout
            if args[1:3] in (["lm", "sample"], ["deepseek", "generate"]) and "--speculative" not in args:
                greedy["run_full"] = out.removeprefix(PROMPT).rstrip("\n")
            elif args[1:3] == ["deepseek", "generate"]:
                greedy["speculative"] = out.removeprefix(PROMPT).rstrip("\n")
            elif args[1:3] == ["llm", "generate"]:
                greedy["llm"] = out.split("\n", 1)[1].rstrip("\n")  # after the "> prompt" line
            elif args[1:3] == ["titans", "niah"]:
                assert "| haystack tokens | accuracy | chance |" in out
            elif args[1:3] == ["lm", "train"] or args[1:3] == [family, "train"]:
                run = tmp_path / "runs" / family
                rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
                assert any("val/bpb" in r for r in rows) and any("train/loss" in r for r in rows)
    finally:
        transformers.logging.set_verbosity(verbosity)
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    assert "run_full" in greedy
    assert len(set(greedy["run_full"])) >= 3, greedy  # a continuation, not one repeated character
    if family == "deepseek":
        assert greedy["speculative"] == greedy["run_full"]
    if family != "titans":
        assert greedy["llm"] == greedy["run_full"], greedy
        assert greedy["serve"] == greedy["run_full"], greedy
