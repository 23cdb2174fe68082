"""Shared fixtures: a tiny Llama saved to disk, and a cache directory kept out of the user's home."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Converted models go to a temporary cache unless TESTTIME_CACHE is set (CI reuses the real one)."""
    import os

    if "TESTTIME_CACHE" not in os.environ:
        os.environ["TESTTIME_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer Llama with a tiny BPE tokenizer, saved with save_pretrained."""
    from testtime.testing import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
