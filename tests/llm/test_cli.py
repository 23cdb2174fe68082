"""`testtime llm generate` and `testtime serve --help` through the real CLI entry point."""

from __future__ import annotations

import json

import pytest

from testtime.cli import main


def test_llm_generate_json(tiny_llama_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "llm",
                "generate",
                "--model",
                str(tiny_llama_dir),
                "--max-new-tokens",
                "5",
                "--json",
                "-n",
                "2",
                "--temperature",
                "1",
                "--seed",
                "3",
                "what is",
                "one two",
            ]
        )
    assert exit_info.value.code in (0, None)
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    assert [(r["prompt"], r["index"]) for r in rows] == [
        ("what is", 0),
        ("what is", 1),
        ("one two", 0),
        ("one two", 1),
    ]
    assert all(0 < r["completion_tokens"] <= 5 for r in rows)
    assert "tok/s" in captured.err


def test_llm_generate_rejects_bad_parameters(tiny_llama_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["llm", "generate", "--model", str(tiny_llama_dir), "--temperature", "-1", "x"])
    assert exit_info.value.code == 2
    assert "temperature" in capsys.readouterr().err


def test_serve_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--model", "--api-key"):
        assert option in out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dtype", "fp16"], "--dtype"),
        (["--batching", "dynamic"], "--batching"),
        (["--max-tokens-limit", "0"], "--max-tokens-limit"),
        (["--max-prompt-tokens", "-5"], "--max-prompt-tokens"),
        (["--max-wait-ms", "-1"], "--max-wait-ms"),
        (["--max-wait-ms", "nan"], "--max-wait-ms"),
        (["--max-kv-tokens", "0"], "--max-kv-tokens"),
        (["--prefill-chunk", "-1"], "--prefill-chunk"),
        (["--prefill-chunk", "10000000"], "--prefill-chunk"),
        (["--max-batch-size", "0"], "--max-batch-size"),
        (["--threads", "0"], "--threads"),
        (["--port", "70000"], "--port"),
    ],
)
def test_serve_rejects_bad_flags_before_loading(flags, message, capsys):
    """Each bad flag is one line on stderr and exit 2, before any model is loaded."""
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--model", "/nonexistent/model.gguf", *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("flags", "expected"),
    [([], "default"), (["--prefill-chunk", "64"], 64), (["--prefill-chunk", "0"], None)],
)
def test_serve_passes_prefill_chunk_to_the_scheduler(monkeypatch, flags, expected, capsys):
    """--prefill-chunk reaches the scheduler: the default is the engine's, 0 turns chunking off."""
    from testtime.llm.engine import DEFAULT_PREFILL_CHUNK

    seen = _serve_load_arguments(monkeypatch, flags)
    assert seen["prefill_chunk"] == (DEFAULT_PREFILL_CHUNK if expected == "default" else expected)
    assert str(DEFAULT_PREFILL_CHUNK) in " ".join(_serve_help(capsys).split())


def _serve_load_arguments(monkeypatch, flags: list[str]) -> dict:
    """The keyword arguments ``testtime serve FLAGS`` passes to ``LocalLLM.from_name`` (stopped there)."""
    from testtime.llm.local import LocalLLM

    seen: dict = {}

    class Stop(Exception):
        pass

    def fake_from_name(name, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(LocalLLM, "from_name", staticmethod(fake_from_name))
    with pytest.raises(Stop):
        main(["serve", *flags])
    return seen


def _serve_help(capsys) -> str:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    return capsys.readouterr().out


def test_generate_rejects_a_bad_dtype(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["llm", "generate", "--dtype", "int3", "x"])
    assert exit_info.value.code == 2
    assert "--dtype" in capsys.readouterr().err


def test_serve_passes_int4_as_a_bfloat16_model_with_quantized_products(monkeypatch):
    import torch

    seen = _serve_load_arguments(monkeypatch, ["--dtype", "int4"])
    assert seen["dtype"] == torch.bfloat16 and seen["quantize"] == "int4"


def test_generate_with_int4_weights(tiny_llama_dir, capsys):
    flags = ["--model", str(tiny_llama_dir), "--dtype", "int4", "--max-new-tokens", "4", "--json"]
    with pytest.raises(SystemExit) as exit_info:
        main(["llm", "generate", *flags, "hello"])
    assert exit_info.value.code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(rows) == 1 and rows[0]["completion_tokens"] == 4


def test_int4_on_a_model_it_cannot_run_is_one_clear_line(tmp_path, capsys):
    from testtime.testing import save_tiny_llama

    path = save_tiny_llama(tmp_path / "odd", hidden=48)
    with pytest.raises(SystemExit) as exit_info:
        main(["llm", "generate", "--model", str(path), "--dtype", "int4", "hello"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--dtype int4" in err and "divisible by 32" in err and "Traceback" not in err
