"""Shims over transformers versions, in one place.

transformers renamed the KV-cache keyword of ``forward`` and the cache field of its output from
``past_key_values`` (4.x, early 5.x) to ``cache`` (5.2x); code that passes a cache by keyword goes through
:func:`cache_kwargs` and reads it back with :func:`returned_cache`.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

__all__ = ["cache_keyword", "cache_kwargs", "returned_cache"]


@functools.lru_cache(maxsize=64)
def _keyword_of(forward_type: type, forward_name: str, parameters: tuple[str, ...]) -> str:
    return "cache" if "cache" in parameters else "past_key_values"


def cache_keyword(model: Any) -> str:
    """``"cache"`` or ``"past_key_values"``: the KV-cache keyword that ``model.forward`` accepts."""
    parameters = tuple(inspect.signature(model.forward).parameters)
    return _keyword_of(type(model), "forward", parameters)


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """``{keyword: cache}`` for ``model(...)``, with the keyword this transformers version uses."""
    return {cache_keyword(model): cache}


def returned_cache(output: Any) -> Any:
    """The KV cache a transformers model output carries (``output.cache`` or ``output.past_key_values``)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values
