"""Cost accounting and budget caps for a search run, in the units of the paper's Table 2.

Mind Evolution (Lee et al., arXiv 2501.09891, Table 2) reports per problem the number of LLM calls, input
and output tokens and the API cost. :class:`CostTracker` counts the same for one run, independently of the
backend's own cumulative :class:`~testtime.llm.protocol.Usage` (a backend may be shared by several runs),
and measures wall time as the *union* of the intervals during which a call was in flight, so that
concurrent calls are counted once (:func:`interval_union`), not summed.

Budget caps (:class:`Budget`) are checked *before* a call is issued: the caller reserves one call and an
upper bound of its tokens (:meth:`CostTracker.reserve`); a reservation that would pass a cap is refused and
the run ends cleanly. The token bound is the prompt's token count when the backend can tokenize (the local
engine), otherwise its UTF-8 byte count plus a chat-template allowance (a byte-level BPE token covers at
least one byte), plus ``max_tokens`` for the answer. Hence a cap is never exceeded, at the price of ending
a little early when the bound is loose.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from testtime.errors import UserError
from testtime.llm.protocol import Prompt, as_messages

__all__ = ["Budget", "Cost", "CostTracker", "Reservation", "interval_union", "prompt_token_bound"]

# Tokens allowed per chat message for role markers and the template, and once per prompt.
_TEMPLATE_TOKENS_PER_MESSAGE = 8
_TEMPLATE_TOKENS_PER_PROMPT = 16


def interval_union(intervals: Iterable[tuple[float, float]]) -> float:
    """Total length of the union of closed intervals ``[start, end]`` (overlaps counted once).

    >>> interval_union([(0, 2), (1, 3), (5, 6)])
    4
    """
    total = 0.0
    current_start = current_end = None
    for start, end in sorted((float(a), float(b)) for a, b in intervals if b > a):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start  # type: ignore[operator]
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start  # type: ignore[operator]
    return total


def prompt_token_bound(prompt: Prompt, llm: Any = None) -> int:
    """An upper bound of a prompt's tokens: exact when ``llm`` has ``encode`` (the local engine), else its
    UTF-8 bytes plus a template allowance per message (see the module docstring)."""
    encode = getattr(llm, "encode", None)
    if callable(encode):
        try:
            return len(encode(prompt))
        except Exception:  # noqa: BLE001 - fall back to the byte bound
            pass
    messages = as_messages(prompt)
    if messages is None:
        return len(str(prompt).encode("utf-8")) + _TEMPLATE_TOKENS_PER_PROMPT
    return _TEMPLATE_TOKENS_PER_PROMPT + sum(
        len(m["content"].encode("utf-8")) + len(m["role"]) + _TEMPLATE_TOKENS_PER_MESSAGE for m in messages
    )


@dataclass(kw_only=True, frozen=True)
class Budget:
    """Caps of one run and optional prices (None: no cap / no price).

    Attributes:
        max_calls: the most LLM calls (one call = one generated answer, as the paper counts).
        max_tokens: the most input plus output tokens.
        price_input: price per input token (any currency), for the cost column.
        price_output: price per output token.
    """

    max_calls: int | None = None
    max_tokens: int | None = None
    price_input: float = 0.0
    price_output: float = 0.0

    def __post_init__(self) -> None:
        if self.max_calls is not None and self.max_calls < 1:
            raise UserError(f"the call budget must be >= 1, got {self.max_calls}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise UserError(f"the token budget must be >= 1, got {self.max_tokens}")
        for name in ("price_input", "price_output"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise UserError(f"{name} (price per token) must be a finite number >= 0, got {value}")


@dataclass(kw_only=True)
class Cost:
    """What a run spent (the columns of the paper's Table 2, plus wall time)."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    wall_seconds: float = 0.0
    price: float = 0.0
    cached_calls: int = 0  # calls answered from a resumed run's log, not asked again

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(kw_only=True)
class Reservation:
    """Room held for one call until it finishes (:meth:`CostTracker.commit`)."""

    tokens: int
    done: bool = False


@dataclass(kw_only=True)
class CostTracker:
    """Counts a run's calls, tokens and wall time and enforces a :class:`Budget` (thread-safe)."""

    budget: Budget = field(default_factory=Budget)
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_calls: int = 0
    intervals: list[tuple[float, float]] = field(default_factory=list)
    _reserved_calls: int = 0
    _reserved_tokens: int = 0
    exhausted: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def reserve(self, token_bound: int) -> Reservation | None:
        """Hold room for one call whose tokens are at most ``token_bound``; None (and ``exhausted``) when a
        cap would be passed."""
        with self._lock:
            b = self.budget
            if b.max_calls is not None and self.calls + self._reserved_calls + 1 > b.max_calls:
                self.exhausted = True
                return None
            used = self.input_tokens + self.output_tokens + self._reserved_tokens
            if b.max_tokens is not None and used + token_bound > b.max_tokens:
                self.exhausted = True
                return None
            self._reserved_calls += 1
            self._reserved_tokens += token_bound
            return Reservation(tokens=token_bound)

    def commit(
        self,
        reservation: Reservation,
        *,
        input_tokens: int,
        output_tokens: int,
        interval: tuple[float, float] | None,
        cached: bool = False,
    ) -> None:
        """Turn a reservation into spent cost (a failed call still counts as a call)."""
        with self._lock:
            assert not reservation.done, "a reservation is committed once"
            reservation.done = True
            self._reserved_calls -= 1
            self._reserved_tokens -= reservation.tokens
            self.calls += 1
            self.cached_calls += int(cached)
            self.input_tokens += input_tokens
            self.output_tokens += output_tokens
            if interval is not None:
                self.intervals.append(interval)

    def cost(self) -> Cost:
        """The cost so far."""
        b = self.budget
        return Cost(
            calls=self.calls,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            wall_seconds=interval_union(self.intervals),
            price=self.input_tokens * b.price_input + self.output_tokens * b.price_output,
            cached_calls=self.cached_calls,
        )
