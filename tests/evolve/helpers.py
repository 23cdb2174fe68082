"""A seeded fake LLM and a toy evaluator for the Mind Evolution tests."""

from __future__ import annotations

import asyncio
import random
import zlib

from testtime.llm.fake import prompt_text
from testtime.llm.protocol import BaseLLM, Completion, Prompt, SamplingParams


class SeededFake(BaseLLM):
    """Answers ``PROPOSED SOLUTION: <digit>`` drawn from (prompt, seed): deterministic per call however the
    calls interleave. ``delay`` > 0 sleeps a random time per call so concurrent calls finish out of order;
    ``reset_answer`` answers reset-selection prompts."""

    name = "seeded-fake"

    def __init__(self, *, delay: float = 0.0, reset_answer: str = "2, 1", fixed: str | None = None) -> None:
        super().__init__()
        self.delay = delay
        self.reset_answer = reset_answer
        self.fixed = fixed
        self.prompts: list[str] = []

    def answer(self, text: str, seed: int | None) -> str:
        if "substantially different" in text:
            return self.reset_answer
        if self.fixed is not None:
            return self.fixed
        rng = random.Random(zlib.crc32(f"{text}|{seed}".encode()))
        return f"critic: thinking\nPROPOSED SOLUTION: {rng.randint(0, 9)}"

    async def _agenerate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        out = []
        for prompt in prompts:
            text = prompt_text(prompt)
            self.prompts.append(text)
            if self.delay:
                await asyncio.sleep(random.Random(f"{text}|{params.seed}").random() * self.delay)
            answer = self.answer(text, params.seed)
            out.append(
                [
                    Completion(
                        text=answer,
                        finish_reason="stop",
                        prompt_tokens=len(text.split()),
                        completion_tokens=len(answer.split()),
                    )
                ]
            )
        return out


def guess_evaluator(target: int = 7):
    """Score an answer that should be the digit ``target``."""

    def evaluate(answer: str):
        try:
            value = int(answer.strip())
        except ValueError:
            return 0.0, "the answer must be one digit", False
        if value == target:
            return 1.0, "correct", True
        return 0.9 - abs(value - target) / 10, f"{value} is too {'low' if value < target else 'high'}", False

    return evaluate
