"""One LLM layer for everything that samples text: loading, the protocol, backends, the engine, the server.

Backends (all :class:`BaseLLM`): :class:`LocalLLM` (a transformers model sampled by the engine),
:class:`OpenAILLM` (any OpenAI-compatible server), :class:`FakeLLM` (scripted, for tests). Heavy modules
(torch models, the openai client, FastAPI) load only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from testtime.llm.loading import ModelNotFoundError, load_model, load_tokenizer, materialize, resolve_model
from testtime.llm.protocol import BaseLLM, Completion, ContinuationScore, Prompt, SamplingParams, Usage

if TYPE_CHECKING:
    from testtime.llm.engine import Engine
    from testtime.llm.fake import FakeLLM
    from testtime.llm.local import LocalLLM
    from testtime.llm.openai_backend import OpenAILLM

__all__ = [
    "BaseLLM",
    "Completion",
    "ContinuationScore",
    "Engine",
    "FakeLLM",
    "LocalLLM",
    "ModelNotFoundError",
    "OpenAILLM",
    "Prompt",
    "SamplingParams",
    "Usage",
    "load_model",
    "load_tokenizer",
    "materialize",
    "resolve_model",
]

_LAZY = {
    "Engine": "testtime.llm.engine",
    "FakeLLM": "testtime.llm.fake",
    "LocalLLM": "testtime.llm.local",
    "OpenAILLM": "testtime.llm.openai_backend",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'testtime.llm' has no attribute {name!r}")
