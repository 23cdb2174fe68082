"""Expert training (Transformer² section 3.2, eq. 1): REINFORCE with a KL penalty, over SVF or LoRA.

Eq. 1 maximises ``J(θ_z) = E[log π_θ'(ŷ | x) · r(ŷ, y)] − λ · KL(π_θ' ‖ π_θ)``: the log-likelihood of a
sampled answer ŷ times its reward, minus the KL divergence of the adapted policy π_θ' from the base policy
π_θ. **KL direction**: as the paper writes it, KL(adapted ‖ base) (the "reverse" KL, expectation under the
adapted policy); for generated answers it is estimated per sampled token with the non-negative estimator
``k3 = exp(log π_θ − log π_θ') − (log π_θ − log π_θ') − 1`` (unbiased for KL(π_θ' ‖ π_θ) on tokens drawn
from π_θ'); for cloze tasks it is computed exactly over the options. (The official code computes the
opposite direction, KL(base ‖ adapted), summed over the whole vocabulary, and ships with λ = 0.)

Reward: +1 when the verifier says ``solved``, −1 otherwise (the paper); ``reward="score"`` uses the graded
score mapped to [−1, 1] as ``2 · score − 1``. With ``num_samples > 1`` rollouts per prompt and
``baseline="group"`` the advantage is the reward minus the mean of its prompt's group (the paper uses one
rollout and no baseline). ``normalize="sum"`` uses the summed token log-probs of ŷ (eq. 1 as written),
``"mean"`` the per-token mean. Gradients are clipped to ``max_grad_norm`` (official code: 1e-3, Adam,
lr 2e-3). Every ``eval_every`` steps the policy is evaluated greedily on a validation split carved out of
the training instances, the best state is kept, and training stops after ``patience`` evaluations without
improvement (the official code also keeps the best validation checkpoint).

Two environments give the rollouts:

- :class:`GenerationEnv`: the model answers the task's chat prompt through the LLM layer (sampled at
  ``temperature``), the task's verifier rewards it; log-probs of the sampled tokens at that temperature.
- :class:`ClozeEnv` (ARC-style multiple choice): the action is one of the options, drawn from
  ``π(o) = softmax_o(score(o) / T)`` where ``score`` is the sum or mean log-probability of the option text
  after the cloze prompt, the same rule cloze evaluation takes the argmax of. ``log π(o)`` is differentiated
  through every option's log-probs, and the KL over the options is exact.

Ablation: ``objective="ntp"`` trains on the reference answers by next-token prediction (mean token
log-likelihood), the paper's SVF+NTP ablation. The LoRA baseline (:class:`LoRAPolicy`, ``peft``) runs in
the same loop.

Log-probs with gradients come from :func:`testtime.rl.logprobs.completion_logprobs`, shared with GRPO.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import torch

from testtime.errors import UserError
from testtime.svf.svf import SVF, notify_weights_changed

__all__ = [
    "ClozeEnv",
    "GenerationEnv",
    "LoRAPolicy",
    "ReinforceConfig",
    "Rollout",
    "SVFPolicy",
    "TrainResult",
    "advantages",
    "k3_kl",
    "reinforce_loss",
    "rewards_from_verdicts",
    "train",
]


# ---------------------------------------------------------------------------------------------- pure math


def rewards_from_verdicts(
    solved: Sequence[bool], scores: Sequence[float], *, kind: str = "solved"
) -> torch.Tensor:
    """Rewards ``[N]``: ``+1 / −1`` from ``solved`` (the paper) or ``2 · score − 1`` (``kind="score"``)."""
    if kind == "solved":
        return torch.tensor([1.0 if s else -1.0 for s in solved])
    if kind == "score":
        return torch.tensor([2.0 * float(s) - 1.0 for s in scores])
    raise UserError(f"reward must be 'solved' or 'score', not {kind!r}")


def advantages(rewards: torch.Tensor, *, group_size: int = 1, baseline: str = "none") -> torch.Tensor:
    """REINFORCE weights ``[N]`` for rewards ``[N]`` laid out as consecutive groups of ``group_size``.

    ``baseline="none"``: the reward itself (eq. 1). ``"group"``: reward minus its group's mean.
    """
    if baseline == "none":
        return rewards
    if baseline == "group":
        if rewards.numel() % group_size:
            raise ValueError("rewards must hold whole groups")
        grouped = rewards.view(-1, group_size)
        return (grouped - grouped.mean(-1, keepdim=True)).reshape(-1)
    raise UserError(f"baseline must be 'none' or 'group', not {baseline!r}")


def k3_kl(
    logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, *, normalize: str = "sum"
) -> torch.Tensor:
    """Per-sequence estimate of KL(π ‖ π_ref) from sampled tokens: ``[B, T] -> [B]``.

    Per token ``k3 = exp(ref − logp) − (ref − logp) − 1 ≥ 0``; summed over the completion (``"sum"``) or
    averaged over its tokens (``"mean"``).
    """
    diff = ref_logp - logp
    per_token = (torch.exp(diff) - diff - 1) * mask
    total = per_token.sum(-1)
    if normalize == "mean":
        return total / mask.sum(-1).clamp(min=1)
    return total


def reinforce_loss(
    seq_logp: torch.Tensor, adv: torch.Tensor, kl: torch.Tensor | None = None, *, kl_coef: float = 0.0
) -> torch.Tensor:
    """The negated eq. 1 averaged over the batch: ``mean(−A · log π(ŷ) + λ · KL)``; ``[B], [B], [B] -> []``."""
    loss = -(adv.to(seq_logp) * seq_logp)
    if kl is not None and kl_coef:
        loss = loss + kl_coef * kl
    return loss.mean()


def sequence_logp(logps: torch.Tensor, mask: torch.Tensor, normalize: str) -> torch.Tensor:
    """``[B, T] -> [B]``: summed (``"sum"``) or per-token mean (``"mean"``) log-probabilities."""
    total = (logps * mask).sum(-1)
    if normalize == "sum":
        return total
    if normalize == "mean":
        return total / mask.sum(-1).clamp(min=1)
    raise UserError(f"normalize must be 'sum' or 'mean', not {normalize!r}")


def _completion_logprobs(
    model: Any, prompts: list[list[int]], completions: list[list[int]], *, temperature: float
):
    """The shared training forward (log-probs with gradients), from the RL package."""
    try:
        from testtime.rl.logprobs import completion_logprobs
    except ModuleNotFoundError as exc:  # pragma: no cover - until the RL package lands
        raise RuntimeError("testtime.rl.logprobs.completion_logprobs is needed for SVF training") from exc
    return completion_logprobs(model, prompts, completions, temperature=temperature)


# ---------------------------------------------------------------------------------------------- policies


class Policy(Protocol):
    """What the loop needs from an adapted model (SVF or LoRA)."""

    llm: Any
    model: Any

    def parameters(self) -> list[torch.nn.Parameter]: ...
    def training(self) -> contextlib.AbstractContextManager[Any]: ...
    def reference(self) -> contextlib.AbstractContextManager[Any]: ...
    def sync_for_sampling(self) -> None: ...
    def state(self) -> dict[str, torch.Tensor]: ...
    def load_state(self, state: dict[str, torch.Tensor]) -> None: ...


class SVFPolicy:
    """An :class:`SVF` behind the loop: factored forward for gradients, merged weights for the engine.

    Args:
        svf: the SVF over the model.
        tokenizer: the model's tokenizer.
        llm: a :class:`~testtime.llm.local.LocalLLM` over ``svf.model`` (built when None).
    """

    def __init__(self, svf: SVF, tokenizer: Any, llm: Any = None, *, num_threads: int | None = None) -> None:
        from testtime.llm.local import LocalLLM

        self.svf = svf
        self.tokenizer = tokenizer
        self.llm = llm or LocalLLM(svf.model, tokenizer, num_threads=num_threads)
        self.model = svf.model

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.svf.z.parameters())

    def training(self) -> contextlib.AbstractContextManager[Any]:
        return self.svf.factored()

    def reference(self) -> contextlib.AbstractContextManager[Any]:
        return self.svf.using_multipliers(None)

    def sync_for_sampling(self) -> None:
        self.svf.merge(self.llm)

    def state(self) -> dict[str, torch.Tensor]:
        return self.svf.vectors()

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.svf.load_vectors(state)
        self.sync_for_sampling()


class LoRAPolicy:
    """The LoRA baseline through ``peft`` (rank 16 on q and v by default), in the same loop.

    The engine samples the PEFT model through its fallback path (the model's own forward), so no merge is
    needed; ``reference()`` disables the adapter.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        rank: int = 16,
        alpha: float = 32.0,
        targets: Sequence[str] = ("q_proj", "v_proj"),
        llm: Any = None,
        num_threads: int | None = None,
    ) -> None:
        from peft import LoraConfig, get_peft_model

        from testtime.llm.local import LocalLLM

        config = LoraConfig(
            r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, bias="none"
        )
        self.model = get_peft_model(model, config)
        self.model.eval()
        self.tokenizer = tokenizer
        self.llm = llm or LocalLLM(self.model, tokenizer, num_threads=num_threads)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def training(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext(self.model)

    def reference(self) -> contextlib.AbstractContextManager[Any]:
        return self.model.disable_adapter()

    def sync_for_sampling(self) -> None:
        notify_weights_changed(self.llm)

    def state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        for name, param in self.model.named_parameters():
            if name in state:
                param.copy_(state[name])
        self.sync_for_sampling()


def num_trainable(policy: Policy) -> int:
    """The number of trainable scalars of a policy."""
    return sum(p.numel() for p in policy.parameters())


# ---------------------------------------------------------------------------------------------- environments


@dataclass(kw_only=True)
class Rollout:
    """One sampled answer and its reward.

    Attributes:
        index: the instance's position in the batch (rollouts of one instance are consecutive).
        prompt_ids: the prompt's token ids.
        completion_ids: the answer's token ids (generation) or the chosen option's (cloze).
        choice: the chosen option index (cloze), else -1.
        solved, score: the verifier's verdict.
    """

    index: int
    prompt_ids: list[int]
    completion_ids: list[int]
    choice: int = -1
    solved: bool = False
    score: float = 0.0
    text: str = ""


@dataclass(kw_only=True)
class PolicyOutput:
    """What an environment computes from the model for a batch of rollouts.

    Attributes:
        seq_logp: ``[B]`` log π(ŷ) (with gradients).
        logps: ``[B, T]`` per-token (generation) or per-option (cloze) log-probs for the KL term.
        mask: ``[B, T]`` 1 where ``logps`` is real.
    """

    seq_logp: torch.Tensor
    logps: torch.Tensor
    mask: torch.Tensor


class GenerationEnv:
    """Rollouts by generation through the LLM layer, rewards by the task's verifier.

    Args:
        task: a :class:`testtime.tasks.Task`.
        max_new_tokens: answer length limit.
        chat: use the task's chat messages (else the raw prompt text).
    """

    def __init__(self, task: Any, *, max_new_tokens: int = 64, chat: bool = True) -> None:
        self.task = task
        self.max_new_tokens = max_new_tokens
        self.chat = chat

    def _prompt(self, instance: Any) -> Any:
        return self.task.messages(instance) if self.chat else self.task.prompt(instance)

    def rollouts(
        self, policy: Policy, instances: Sequence[Any], *, num_samples: int, temperature: float, seed: int
    ):
        from testtime.llm.protocol import SamplingParams

        prompts = [self._prompt(i) for i in instances]
        params = SamplingParams(
            n=num_samples, temperature=temperature, max_tokens=self.max_new_tokens, seed=seed
        )
        outputs = policy.llm.generate(prompts, params)
        out = []
        for index, (instance, prompt, choices) in enumerate(zip(instances, prompts, outputs, strict=True)):
            prompt_ids = policy.llm.encode(prompt)
            for completion in choices:
                verdict = self.task.verify(instance, completion.text)
                ids = list(completion.token_ids or []) or [policy.llm.tokenizer.eos_token_id]
                out.append(
                    Rollout(
                        index=index,
                        prompt_ids=prompt_ids,
                        completion_ids=ids,
                        solved=verdict.solved,
                        score=verdict.score,
                        text=completion.text,
                    )
                )
        return out

    def policy_output(self, model: Any, rollouts: Sequence[Rollout], *, normalize: str, temperature: float):
        logps, mask = _completion_logprobs(
            model,
            [r.prompt_ids for r in rollouts],
            [r.completion_ids for r in rollouts],
            temperature=temperature if temperature > 0 else 1.0,
        )
        return PolicyOutput(seq_logp=sequence_logp(logps, mask, normalize), logps=logps, mask=mask)

    def kl(self, current: PolicyOutput, reference: PolicyOutput, *, normalize: str) -> torch.Tensor:
        return k3_kl(current.logps, reference.logps.detach(), current.mask, normalize=normalize)

    def reference_rollouts(self, policy: Policy, instances: Sequence[Any]) -> list[Rollout]:
        """The reference answers as rollouts (for the next-token-prediction ablation)."""
        out = []
        for index, instance in enumerate(instances):
            if instance.reference is None:
                raise UserError(
                    f"task {self.task.name} has no reference answers: next-token prediction needs them"
                )
            ids = list(policy.llm.tokenizer(str(instance.reference), add_special_tokens=False)["input_ids"])
            eos = policy.llm.tokenizer.eos_token_id
            out.append(
                Rollout(
                    index=index,
                    prompt_ids=policy.llm.encode(self._prompt(instance)),
                    completion_ids=ids + ([eos] if eos is not None else []),
                    solved=True,
                    score=1.0,
                )
            )
        return out

    def ntp_logp(self, model: Any, rollouts: Sequence[Rollout]) -> torch.Tensor:
        """``[B]`` mean token log-likelihood of the reference answers."""
        return self.policy_output(model, rollouts, normalize="mean", temperature=1.0).seq_logp

    def evaluate(self, policy: Policy, instances: Sequence[Any]) -> float:
        """Greedy accuracy (fraction solved)."""
        if not instances:
            return 0.0
        policy.sync_for_sampling()
        outputs = policy.llm.generate(
            [self._prompt(i) for i in instances], temperature=0, max_tokens=self.max_new_tokens
        )
        return sum(
            self.task.verify(i, o[0].text).solved for i, o in zip(instances, outputs, strict=True)
        ) / len(instances)


class ClozeEnv:
    """Multiple choice by cloze scoring (ARC): the action is an option, rewarded by the verifier.

    Args:
        task: a task with ``cloze_prompt(instance)`` and ``instance.data["choices"]`` / ``["labels"]``.
        score: ``"mean"`` (per-token mean log-prob of an option, as cloze evaluation) or ``"sum"``.
    """

    def __init__(self, task: Any, *, score: str = "mean") -> None:
        if not hasattr(task, "cloze_prompt"):
            raise UserError(f"task {task.name} has no cloze prompt; use generation rollouts")
        self.task = task
        self.score = score

    def _encode(self, policy: Policy, instance: Any) -> tuple[list[int], list[list[int]]]:
        tok = policy.llm.tokenizer
        prompt = list(tok(self.task.cloze_prompt(instance), add_special_tokens=False)["input_ids"])
        options = [
            list(tok(" " + c, add_special_tokens=False)["input_ids"]) for c in instance.data["choices"]
        ]
        return prompt, options

    def _option_scores(
        self, model: Any, encoded: Sequence[tuple[list[int], list[list[int]]]]
    ) -> list[torch.Tensor]:
        prompts = [p for p, options in encoded for _ in options]
        completions = [o for _, options in encoded for o in options]
        logps, mask = _completion_logprobs(model, prompts, completions, temperature=1.0)
        flat = sequence_logp(logps, mask, self.score)
        sizes = [len(options) for _, options in encoded]
        return list(torch.split(flat, sizes))

    def _verdict(self, instance: Any, choice: int) -> Any:
        return self.task.verify(instance, f"The answer is ({instance.data['labels'][choice]}).")

    def rollouts(
        self, policy: Policy, instances: Sequence[Any], *, num_samples: int, temperature: float, seed: int
    ):
        encoded = [self._encode(policy, i) for i in instances]
        scores = self._engine_scores(policy, encoded)
        generator = torch.Generator().manual_seed(seed)
        out = []
        for index, (instance, (prompt, options), row) in enumerate(
            zip(instances, encoded, scores, strict=True)
        ):
            if temperature > 0:
                probs = torch.softmax(row.float() / temperature, -1)
                picks = torch.multinomial(probs, num_samples, replacement=True, generator=generator).tolist()
            else:
                picks = [int(row.argmax())] * num_samples
            for choice in picks:
                verdict = self._verdict(instance, choice)
                out.append(
                    Rollout(
                        index=index,
                        prompt_ids=prompt,
                        completion_ids=options[choice],
                        choice=choice,
                        solved=verdict.solved,
                        score=verdict.score,
                        text=instance.data["choices"][choice],
                    )
                )
        return out, encoded

    def policy_output(
        self, model: Any, rollouts: Sequence[Rollout], *, normalize: str, temperature: float, encoded
    ):
        # One scoring pass per distinct instance; rollouts of an instance share it.
        order = sorted({r.index for r in rollouts})
        scores = self._option_scores(model, [encoded[i] for i in order])
        by_index = dict(zip(order, scores, strict=True))
        width = max(s.numel() for s in scores)
        t = temperature if temperature > 0 else 1.0
        logps = torch.zeros(len(rollouts), width, dtype=scores[0].dtype)
        mask = torch.zeros(len(rollouts), width, dtype=scores[0].dtype)
        seq = []
        for row, r in enumerate(rollouts):
            log_pi = torch.log_softmax(by_index[r.index] / t, -1)
            logps[row, : log_pi.numel()] = log_pi
            mask[row, : log_pi.numel()] = 1
            seq.append(log_pi[r.choice])
        return PolicyOutput(seq_logp=torch.stack(seq), logps=logps, mask=mask)

    def reference_output(
        self, policy: Policy, model: Any, rollouts: Sequence[Rollout], temperature: float, encoded
    ):
        """The base policy's option distributions, computed once per question and cached (the base never changes)."""
        cache = self.__dict__.setdefault("_reference_cache", {})
        missing = sorted({r.index for r in rollouts if _cloze_key(encoded[r.index]) not in cache})
        if missing:
            with torch.no_grad(), policy.reference():
                scores = self._option_scores(model, [encoded[i] for i in missing])
            for i, row in zip(missing, scores, strict=True):
                cache[_cloze_key(encoded[i])] = row.detach()
        t = temperature if temperature > 0 else 1.0
        width = max(len(encoded[r.index][1]) for r in rollouts)
        logps = torch.zeros(len(rollouts), width)
        mask = torch.zeros(len(rollouts), width)
        for row, r in enumerate(rollouts):
            log_pi = torch.log_softmax(cache[_cloze_key(encoded[r.index])] / t, -1)
            logps[row, : log_pi.numel()] = log_pi
            mask[row, : log_pi.numel()] = 1
        return PolicyOutput(seq_logp=torch.zeros(len(rollouts)), logps=logps, mask=mask)

    def kl(self, current: PolicyOutput, reference: PolicyOutput, *, normalize: str) -> torch.Tensor:
        """Exact KL(π ‖ π_ref) over the options: ``Σ_o π(o) (log π(o) − log π_ref(o))``."""
        p = torch.exp(current.logps) * current.mask
        return (p * (current.logps - reference.logps.detach()) * current.mask).sum(-1)

    def reference_rollouts(self, policy: Policy, instances: Sequence[Any]):
        encoded = [self._encode(policy, i) for i in instances]
        out = []
        for index, (instance, (prompt, options)) in enumerate(zip(instances, encoded, strict=True)):
            choice = instance.data["labels"].index(instance.data["answer"])
            out.append(
                Rollout(
                    index=index, prompt_ids=prompt, completion_ids=options[choice], choice=choice, solved=True
                )
            )
        return out, encoded

    def ntp_logp(self, model: Any, rollouts: Sequence[Rollout]) -> torch.Tensor:
        logps, mask = _completion_logprobs(
            model, [r.prompt_ids for r in rollouts], [r.completion_ids for r in rollouts], temperature=1.0
        )
        return sequence_logp(logps, mask, "mean")

    def _engine_scores(self, policy: Policy, encoded: Sequence[tuple[list[int], list[list[int]]]]):
        """Option scores without gradients through the LLM layer's engine (the current merged weights)."""
        policy.sync_for_sampling()
        prompts = [p for p, options in encoded for _ in options]
        completions = [o for _, options in encoded for o in options]
        rows = policy.llm.score_tokens(prompts, completions)
        flat = torch.tensor(
            [sum(r) / (len(r) if self.score == "mean" else 1) for r in rows], dtype=torch.float64
        )
        return list(torch.split(flat, [len(options) for _, options in encoded]))

    def evaluate(self, policy: Policy, instances: Sequence[Any]) -> float:
        """Cloze accuracy: the option with the best score (argmax) verifies as solved."""
        if not instances:
            return 0.0
        encoded = [self._encode(policy, i) for i in instances]
        scores = self._engine_scores(policy, encoded)
        solved = sum(
            self._verdict(i, int(row.argmax())).solved for i, row in zip(instances, scores, strict=True)
        )
        return solved / len(instances)


def _cloze_key(encoded: tuple[list[int], list[list[int]]]) -> tuple[tuple[int, ...], ...]:
    prompt, options = encoded
    return (tuple(prompt), *(tuple(o) for o in options))


def make_env(task: Any, *, mode: str = "auto", max_new_tokens: int = 64, score: str = "mean") -> Any:
    """``"cloze"`` for tasks with a cloze prompt under ``"auto"``, else generation."""
    if mode == "auto":
        mode = "cloze" if hasattr(task, "cloze_prompt") else "generate"
    if mode == "cloze":
        return ClozeEnv(task, score=score)
    if mode == "generate":
        return GenerationEnv(task, max_new_tokens=max_new_tokens)
    raise UserError(f"env must be auto, cloze or generate, not {mode!r}")


# ---------------------------------------------------------------------------------------------- the loop


@dataclass(kw_only=True)
class ReinforceConfig:
    """Expert training hyper-parameters (defaults: the official code's where it has one).

    Attributes:
        objective: ``"reinforce"`` (eq. 1) or ``"ntp"`` (next-token prediction on reference answers, the
            paper's ablation).
        lr: Adam learning rate (official: 2e-3 for SVF).
        max_grad_norm: gradient clipping (official: 1e-3).
        kl_coef: λ of eq. 1 (official configs: 0; here on by default at a small value).
        batch_size: prompts per step (official: 256; small here for CPUs).
        num_samples: rollouts per prompt (paper: 1).
        baseline: ``"none"`` (paper) or ``"group"`` (reward minus the prompt group's mean).
        reward: ``"solved"`` (+1/−1, paper) or ``"score"`` (graded, 2·score − 1).
        normalize: ``"sum"`` (eq. 1) or ``"mean"`` token log-probs per answer.
        temperature: rollout temperature (the official code decodes greedily; sampling explores).
        max_steps: optimisation steps.
        eval_every: validate every this many steps (and at step 0).
        patience: stop after this many validations without improvement (0: never).
        val_fraction: share of the training instances held out for validation.
        seed: the seed of batches, rollouts and the split.
    """

    objective: Literal["reinforce", "ntp"] = "reinforce"
    lr: float = 2e-3
    max_grad_norm: float = 1e-3
    kl_coef: float = 0.05
    batch_size: int = 8
    num_samples: int = 1
    baseline: Literal["none", "group"] = "none"
    reward: Literal["solved", "score"] = "solved"
    normalize: Literal["sum", "mean"] = "sum"
    temperature: float = 1.0
    max_steps: int = 20
    eval_every: int = 5
    patience: int = 3
    val_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "objective": self.objective in ("reinforce", "ntp"),
            "lr": self.lr > 0,
            "max_grad_norm": self.max_grad_norm > 0,
            "kl_coef": self.kl_coef >= 0,
            "batch_size": self.batch_size >= 1,
            "num_samples": self.num_samples >= 1,
            "baseline": self.baseline in ("none", "group"),
            "reward": self.reward in ("solved", "score"),
            "normalize": self.normalize in ("sum", "mean"),
            "temperature": self.temperature >= 0,
            "max_steps": self.max_steps >= 0,
            "eval_every": self.eval_every >= 1,
            "patience": self.patience >= 0,
            "val_fraction": 0 <= self.val_fraction < 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise UserError(f"invalid training setting {bad[0]}={getattr(self, bad[0])!r}")
        if self.baseline == "group" and self.num_samples < 2:
            raise UserError("baseline='group' needs num_samples >= 2")


@dataclass(kw_only=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        best_val: the best validation accuracy (the kept state's).
        base_val: validation accuracy before training.
        steps: optimisation steps taken.
        history: one dict per step (loss, reward, kl, grad norm, seconds) and per validation.
        seconds: wall time.
    """

    best_val: float
    base_val: float
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def split_train_val(instances: Sequence[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """A seeded split of the training instances into (train, validation)."""
    items = list(instances)
    random.Random(seed).shuffle(items)
    num_val = int(round(fraction * len(items)))
    if fraction > 0 and len(items) > 1:
        num_val = max(1, min(num_val, len(items) - 1))
    return items[num_val:], items[:num_val]


def _rollouts(env: Any, policy: Policy, batch: Sequence[Any], config: ReinforceConfig, seed: int):
    out = env.rollouts(
        policy, batch, num_samples=config.num_samples, temperature=config.temperature, seed=seed
    )
    return out if isinstance(out, tuple) else (out, None)


def _policy_output(env: Any, model: Any, rollouts: Sequence[Rollout], config: ReinforceConfig, encoded: Any):
    kwargs = {"encoded": encoded} if encoded is not None else {}
    return env.policy_output(
        model, rollouts, normalize=config.normalize, temperature=config.temperature, **kwargs
    )


def train_step(
    policy: Policy, env: Any, batch: Sequence[Any], config: ReinforceConfig, optimizer: Any, step: int
):
    """One optimisation step (rollouts → loss → backward → clip → Adam); returns its metrics."""
    start = time.perf_counter()
    seed = config.seed * 1_000_003 + step
    metrics: dict[str, Any] = {"step": step}
    if config.objective == "ntp":
        references = env.reference_rollouts(policy, batch)
        rollouts = references[0] if isinstance(references, tuple) else references
        with policy.training() as model:
            loss = -env.ntp_logp(model, rollouts).mean()
            loss.backward()
    else:
        policy.sync_for_sampling()
        rollouts, encoded = _rollouts(env, policy, batch, config, seed)
        rewards = rewards_from_verdicts(
            [r.solved for r in rollouts], [r.score for r in rollouts], kind=config.reward
        )
        adv = advantages(rewards, group_size=config.num_samples, baseline=config.baseline)
        metrics["reward"] = float(rewards.mean())
        metrics["solved"] = sum(r.solved for r in rollouts) / len(rollouts)
        if not bool(adv.ne(0).any()):
            # Every advantage is 0 (equal rewards under the group baseline): the batch carries no
            # policy-gradient signal. The KL term's gradient is then float noise while the policy sits at
            # the reference, and Adam would scale that noise up to a full-size step, so no update is taken
            # (as DAPO's dynamic sampling drops zero-variance groups).
            optimizer.zero_grad(set_to_none=True)
            metrics.update(skipped=1, grad_norm=0.0, loss=0.0, seconds=time.perf_counter() - start)
            return metrics
        with policy.training() as model:
            current = _policy_output(env, model, rollouts, config, encoded)
            kl = None
            if config.kl_coef > 0:
                cached = getattr(env, "reference_output", None)
                if cached is not None:
                    reference = cached(policy, model, rollouts, config.temperature, encoded)
                else:
                    with torch.no_grad(), policy.reference():
                        reference = _policy_output(env, model, rollouts, config, encoded)
                kl = env.kl(current, reference, normalize=config.normalize)
                metrics["kl"] = float(kl.detach().mean())
            loss = reinforce_loss(current.seq_logp, adv, kl, kl_coef=config.kl_coef)
            loss.backward()
    params = policy.parameters()
    metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    metrics["loss"] = float(loss.detach())
    metrics["seconds"] = time.perf_counter() - start
    return metrics


def train(
    policy: Policy,
    env: Any,
    instances: Sequence[Any],
    config: ReinforceConfig | None = None,
    *,
    log: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train an expert on ``instances`` (training split) with validation-based early stopping.

    Args:
        policy: :class:`SVFPolicy` or :class:`LoRAPolicy`.
        env: :class:`GenerationEnv` or :class:`ClozeEnv`.
        instances: training instances; ``config.val_fraction`` of them become the validation split.
        config: hyper-parameters.
        log: called with every metrics dict (e.g. to write ``metrics.jsonl``).
        progress: a tqdm bar over steps.

    Returns:
        A :class:`TrainResult`; the policy holds the best validated state.
    """
    config = config or ReinforceConfig()
    log = log or (lambda _: None)
    start = time.perf_counter()
    train_items, val_items = split_train_val(instances, config.val_fraction, config.seed)
    if not train_items:
        raise UserError("no training instances left after the validation split")
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.lr)
    rng = random.Random(config.seed)
    history: list[dict[str, Any]] = []

    def validate(step: int) -> float:
        accuracy = env.evaluate(policy, val_items) if val_items else math.nan
        record = {"step": step, "val_accuracy": accuracy, "num_val": len(val_items)}
        history.append(record)
        log(record)
        return accuracy

    base_val = best_val = validate(0)
    best_state = policy.state()
    bad = 0
    steps = 0
    iterator: Any = range(config.max_steps)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc=f"train ({config.objective})", unit="step")
    order: list[Any] = []
    for step in iterator:
        if len(order) < config.batch_size:
            refill = list(train_items)
            rng.shuffle(refill)
            order += refill
        batch, order = order[: config.batch_size], order[config.batch_size :]
        metrics = train_step(policy, env, batch, config, optimizer, step)
        history.append(metrics)
        log(metrics)
        steps = step + 1
        if progress:
            iterator.set_postfix(
                loss=f"{metrics['loss']:.3f}", reward=f"{metrics.get('reward', math.nan):.2f}"
            )
        if val_items and steps % config.eval_every == 0:
            accuracy = validate(steps)
            if accuracy > best_val:
                best_val, best_state, bad = accuracy, policy.state(), 0
            else:
                bad += 1
                if config.patience and bad >= config.patience:
                    break
    if val_items:
        policy.load_state(best_state)
    else:
        best_val = math.nan
    policy.sync_for_sampling()
    return TrainResult(
        best_val=best_val,
        base_val=base_val,
        steps=steps,
        history=history,
        seconds=time.perf_counter() - start,
    )


def config_dict(config: ReinforceConfig) -> dict[str, Any]:
    """The config as a JSON-serialisable dict (for expert metadata)."""
    return asdict(config)
