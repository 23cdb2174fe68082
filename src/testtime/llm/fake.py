"""A scripted fake backend: deterministic answers without a model, for fast tests of what is built on top.

The script decides each answer. It may be:

- a callable ``(prompt_text, index) -> str`` (``index`` counts completions of this prompt, 0..n-1; the
  prompt text is the raw prompt, or the conversation's messages joined as ``"role: content"`` lines);
- a sequence of strings, answered in order across calls (cycling when ``cycle=True``, else an error when
  exhausted);
- a dict from prompt text (or a substring of it) to answer;
- None: echo the prompt's last line.

Tokens are whitespace-separated words: ``max_tokens`` cuts an answer to that many words (finish reason
``"length"``), stop strings cut it before their first occurrence (``"stop"``). Log-probabilities, when asked
for, are ``-1.0`` per word. Every request is recorded in ``self.requests``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from testtime.llm.protocol import BaseLLM, Completion, Prompt, SamplingParams, as_messages

__all__ = ["FakeLLM", "FakeRequest", "prompt_text"]

Script = Callable[[str, int], str] | Sequence[str] | Mapping[str, str] | None


@dataclass(kw_only=True, frozen=True)
class FakeRequest:
    """One prompt as the fake backend received it."""

    prompt: str
    params: SamplingParams


def prompt_text(prompt: Prompt) -> str:
    """The text of a prompt: raw text as is, a conversation as ``"role: content"`` lines."""
    messages = as_messages(prompt)
    if messages is None:
        return str(prompt)
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


class FakeLLM(BaseLLM):
    """A deterministic scripted LLM (see the module docstring).

    Args:
        script: how to answer.
        cycle: restart a sequence script when exhausted.
        name: the model name reported.
        defaults: sampling parameters for calls that pass none.
    """

    def __init__(
        self,
        script: Script = None,
        *,
        cycle: bool = False,
        name: str = "fake",
        defaults: SamplingParams | None = None,
    ) -> None:
        super().__init__(defaults=defaults)
        self.script = script
        self.cycle = cycle
        self.name = name
        self.requests: list[FakeRequest] = []
        self._position = 0
        self._lock = threading.Lock()

    def _answer(self, text: str, index: int) -> str:
        script = self.script
        if script is None:
            return text.rsplit("\n", 1)[-1]
        if callable(script):
            return script(text, index)
        if isinstance(script, Mapping):
            if text in script:
                return script[text]
            for key, value in script.items():
                if key in text:
                    return value
            raise KeyError(f"the fake LLM's script has no answer for prompt {text!r}")
        with self._lock:
            if self._position >= len(script):
                if not self.cycle or not script:
                    raise IndexError(f"the fake LLM's script of {len(script)} answers is exhausted")
                self._position = 0
            answer = script[self._position]
            self._position += 1
        return answer

    def _generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        out = []
        for prompt in prompts:
            text = prompt_text(prompt)
            with self._lock:
                self.requests.append(FakeRequest(prompt=text, params=params))
            choices = []
            for index in range(params.n):
                answer = self._answer(text, index)
                reason = "stop"
                cut = min((i for i in (answer.find(s) for s in params.stop) if i >= 0), default=-1)
                if cut >= 0:
                    answer = answer[:cut]
                words = answer.split()
                if len(words) > params.max_tokens:
                    words = words[: params.max_tokens]
                    answer, reason = " ".join(words), "length"
                choices.append(
                    Completion(
                        text=answer,
                        finish_reason=reason,  # type: ignore[arg-type]
                        prompt_tokens=len(text.split()),
                        completion_tokens=len(words),
                        logprobs=[-1.0] * len(words) if params.logprobs else None,
                    )
                )
            out.append(choices)
        return out
