"""The local backend: a transformers causal LM and its tokenizer behind the LLM protocol, sampled by the engine.

Chat prompts go through the tokenizer's chat template (with the generation prompt); raw prompts are
tokenized as they are. ``n`` samples of a prompt are ``n`` rows of one engine batch; batches larger than
``max_batch_size`` rows are split, longest prompts together. Generation of a row ends at an end-of-sequence
token (the tokenizer's and the generation config's) or at a stop string, whose text is cut off; the
returned ``token_ids`` and ``logprobs`` still cover every generated token, the stop token or the tokens of
the stop string included.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from testtime.llm.engine import Engine
from testtime.llm.protocol import BaseLLM, Completion, ContinuationScore, Prompt, SamplingParams, as_messages

__all__ = ["LocalLLM"]


class LocalLLM(BaseLLM):
    """A local model sampled by :class:`~testtime.llm.engine.Engine`.

    Args:
        model: a transformers causal LM (eval mode).
        tokenizer: its tokenizer (with a chat template for chat prompts).
        name: the model's name in reports and ``/v1/models``.
        max_batch_size: the most rows (prompts times n) per engine batch.
        defaults: sampling parameters for calls that pass none.
        lean: passed to the engine (None: lean forward when the architecture supports it).
        num_threads: torch threads while the engine runs (None: torch's setting).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str = "local",
        max_batch_size: int = 32,
        defaults: SamplingParams | None = None,
        lean: bool | None = None,
        num_threads: int | None = None,
    ) -> None:
        super().__init__(defaults=defaults)
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.max_batch_size = max_batch_size
        self.engine = Engine(model, lean=lean, num_threads=num_threads)
        self._lock = threading.Lock()
        eos: set[int] = set()
        if tokenizer.eos_token_id is not None:
            eos.add(int(tokenizer.eos_token_id))
        config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if isinstance(config_eos, int):
            eos.add(config_eos)
        elif config_eos is not None:
            eos.update(int(t) for t in config_eos)
        self.eos_token_ids = sorted(eos)

    @classmethod
    def from_name(
        cls, name: str | os.PathLike[str] | None = None, *, max_batch_size: int = 32, **kwargs: Any
    ) -> LocalLLM:
        """Load a model by name (see :func:`testtime.llm.loading.resolve_model`; None: embedded SmolLM2)."""
        from testtime.llm.loading import load_model

        model, tokenizer = load_model(name)
        label = "smollm2-135m-instruct" if name is None else os.fspath(name)
        return cls(model, tokenizer, name=label, max_batch_size=max_batch_size, **kwargs)

    # ------------------------------------------------------------------ tokens

    def encode(self, prompt: Prompt) -> list[int]:
        """The token ids the model sees for a prompt (chat template applied to conversations)."""
        messages = as_messages(prompt)
        if messages is None:
            ids = self.tokenizer(prompt)["input_ids"]
        else:
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
        ids = list(ids)
        if not ids:
            raise ValueError("a prompt must encode to at least one token")
        return ids

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ------------------------------------------------------------------ generation

    def _generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        encoded = [self.encode(p) for p in prompts]
        rows = [(index, sample) for index in range(len(prompts)) for sample in range(params.n)]
        rows.sort(key=lambda r: -len(encoded[r[0]]))  # similar lengths share a batch: less padding
        results: dict[tuple[int, int], Completion] = {}
        stop_strings = params.stop
        tail = max((len(s) for s in stop_strings), default=0) + 8

        for chunk_index, chunk_start in enumerate(range(0, len(rows), self.max_batch_size)):
            chunk = rows[chunk_start : chunk_start + self.max_batch_size]
            stop_check = None
            if stop_strings:

                def stop_check(row: int, tokens: list[int]) -> bool:
                    text = self.tokenizer.decode(tokens[-tail:], skip_special_tokens=True)
                    return any(s in text for s in stop_strings)

            seed = None if params.seed is None else params.seed + chunk_index
            with self._lock:
                out = self.engine.generate(
                    [encoded[index] for index, _ in chunk],
                    max_new_tokens=params.max_tokens,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    seed=seed,
                    stop_token_ids=self.eos_token_ids,
                    stop_check=stop_check,
                    return_logprobs=params.logprobs,
                )
            for position, key in enumerate(chunk):
                tokens = out.tokens[position]
                text = self._decode(tokens)
                reason = out.finish_reasons[position]
                cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=-1)
                if cut >= 0:
                    text, reason = text[:cut], "stop"
                results[key] = Completion(
                    text=text,
                    finish_reason=reason,  # type: ignore[arg-type]
                    prompt_tokens=len(encoded[key[0]]),
                    completion_tokens=len(tokens),
                    token_ids=tokens,
                    logprobs=out.logprobs[position] if params.logprobs else None,
                )
        return [[results[(index, sample)] for sample in range(params.n)] for index in range(len(prompts))]

    # ------------------------------------------------------------------ scoring

    def score_tokens(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> list[list[float]]:
        """Log-probabilities of given completion tokens after given prompt tokens (see ``Engine.score``)."""
        out: list[list[float]] = []
        for start in range(0, len(prompt_ids), self.max_batch_size):
            with self._lock:
                out += self.engine.score(
                    prompt_ids[start : start + self.max_batch_size],
                    completion_ids[start : start + self.max_batch_size],
                )
        return out

    def score_continuations(self, prompt: str, continuations: Sequence[str]) -> list[ContinuationScore]:
        """Log-probability sums of continuations of a raw-text prompt (the tasks' ``ContinuationScorer``).

        Prompt and continuations are tokenized separately, without special tokens, and concatenated, as
        :class:`testtime.tasks.scoring.TransformersScorer` does; the engine scores all rows in one batch.
        """
        prompt_ids = list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        option_ids = [list(self.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in continuations]
        if any(not ids for ids in option_ids):
            raise ValueError("every continuation must have at least one token")
        rows = self.score_tokens([prompt_ids] * len(option_ids), option_ids)
        return [ContinuationScore(float(sum(row)), len(row)) for row in rows]

    def score(self, prompts: list[Prompt], completions: list[str]) -> list[list[float]]:
        """Log-probabilities of the tokens of given completion texts after given prompts.

        The completion text is tokenized on its own (no special tokens added), so its tokens are those a
        model would have generated only if the tokenizer splits the joined text the same way; for RL on
        sampled completions pass their ``token_ids`` to :meth:`score_tokens` instead.
        """
        prompt_ids = [self.encode(p) for p in prompts]
        completion_ids = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in completions]
        return self.score_tokens(prompt_ids, completion_ids)
