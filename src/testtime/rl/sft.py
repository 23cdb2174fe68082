"""The recipe's supervised stages: prompt templates, cold-start data, SFT, rejection sampling, distillation.

R1 (arXiv 2501.12948, sec. 2.3) runs: (1) cold-start SFT of the base model on a few thousand long
chain-of-thought examples in a readable format; (2) reasoning-oriented RL; (3) rejection sampling from the
RL checkpoint, keeping only correct (verified) and readable answers, into an SFT set; (4) SFT again; and
sec. 2.4 distils smaller students by plain SFT on the teacher's ~800k curated samples. Here:

- :func:`prompt_for` builds a task's prompt in one of three templates: ``chat`` (the task's own messages),
  ``r1`` (a system message asking for the ``<think>``/``<answer>`` format, then the task), ``r1-zero`` (a
  raw-text conversation in the spirit of R1's Table 1, ending in ``Assistant: <think>``, so the reasoning
  block is prefilled; the wording is this package's).
- :func:`cold_start_examples` writes R1-format traces for tasks whose instances carry a worked solution or
  can be solved step by step by rule (arithmetic, countdown, GSM8K's reference solutions): the reasoning
  inside ``<think>``, the final answer inside ``<answer>``. The paper's cold-start data is model-written and
  human-refined; these are rule-written (the deviation is noted in docs/fidelity/r1.md).
- :func:`sft_train` is SFT on ``{"prompt", "completion"}`` rows: mean negative log-likelihood of the
  completion tokens (prompt tokens masked), AdamW, the chunked log-prob forward of :mod:`logprobs`.
- :func:`rejection_sample` samples ``n`` completions per instance, keeps those the verifier solves (and,
  optionally, whose format is right), deduplicates them, and returns SFT rows with the verdicts.
- distillation = :func:`rejection_sample` on the teacher, then :func:`sft_train` on the student.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from testtime.llm.protocol import SamplingParams
from testtime.rl.logprobs import completion_logprobs
from testtime.rl.rewards import answer_text, format_ok
from testtime.tasks.base import Instance, Task

__all__ = [
    "R1_SYSTEM",
    "SFTConfig",
    "TEMPLATES",
    "cold_start_examples",
    "prompt_for",
    "read_jsonl",
    "rejection_sample",
    "sft_train",
    "task_dataset",
    "write_jsonl",
]

TEMPLATES = ("chat", "r1", "r1-zero")
R1_SYSTEM = (
    "You are a careful reasoner. First think about the problem step by step inside <think> </think> tags, "
    "then give only the final answer inside <answer> </answer> tags."
)


def prompt_for(task: Task, instance: Instance, template: str = "chat") -> Any:
    """The prompt of ``instance`` in a template (``chat`` | ``r1`` | ``r1-zero``; see the module docstring)."""
    if template == "chat":
        return task.messages(instance)
    if template == "r1":
        return [{"role": "system", "content": R1_SYSTEM}, *task.messages(instance)]
    if template == "r1-zero":
        return (
            "A conversation between a User and an Assistant. The Assistant reasons about the problem step by "
            "step inside <think> </think> tags and then states the final answer inside <answer> </answer> "
            f"tags.\nUser: {task.prompt(instance)}\nAssistant: <think>"
        )
    raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")


def task_dataset(
    task: Task, *, split: str | None, n: int, seed: int, template: str = "chat", **difficulty: int
) -> list[dict[str, Any]]:
    """GRPO rows ``{"prompt", "instance"}`` for ``n`` instances of a task split."""
    instances = task.instances(split, seed=seed, n=n, **difficulty)
    return [{"prompt": prompt_for(task, i, template), "instance": i.to_dict()} for i in instances]


# ---------------------------------------------------------------------------- cold start


def _arithmetic_trace(expression: str) -> tuple[str, str]:
    """Step-by-step evaluation with * before + and - (left to right), as text."""
    tokens = expression.split()
    values = [int(t) for t in tokens[0::2]]
    ops = tokens[1::2]
    steps = []
    # multiplications first
    i = 0
    while i < len(ops):
        if ops[i] == "*":
            product = values[i] * values[i + 1]
            steps.append(f"{values[i]} * {values[i + 1]} = {product}")
            values[i : i + 2] = [product]
            ops.pop(i)
        else:
            i += 1
    total = values[0]
    for op, value in zip(ops, values[1:], strict=True):
        new = total + value if op == "+" else total - value
        steps.append(f"{total} {op} {value} = {new}")
        total = new
    if not steps:
        steps.append(f"The expression is just {total}.")
    thinking = (
        "Multiplications first, then left to right.\n" + "\n".join(steps) + f"\nSo the result is {total}."
    )
    return thinking, str(total)


def cold_start_examples(
    task: Task, *, n: int, seed: int, template: str = "r1", **difficulty: int
) -> list[dict[str, Any]]:
    """``n`` rule-written R1-format SFT rows ``{"prompt", "completion", "instance"}`` for a task.

    Supported: ``arithmetic`` (step-by-step evaluation), ``countdown`` (the reference expression worked
    out), ``gsm8k`` (the data set's worked solution). With ``template="r1-zero"`` the completion omits the
    prefilled ``<think>``.

    Raises:
        ValueError: a task without a rule-written trace.
    """
    rows = []
    for instance in task.instances("train" if "train" in task.splits else None, seed=seed, n=n, **difficulty):
        if task.name == "arithmetic":
            thinking, answer = _arithmetic_trace(instance.data["expression"])
        elif task.name == "gsm8k":
            solution = instance.data["solution"].rsplit("####", 1)[0]
            thinking = "\n".join(
                line.split("<<")[0] + line.split(">>")[-1] if "<<" in line else line
                for line in solution.strip().splitlines()
            )
            answer = str(instance.data["answer"])
        elif task.name == "countdown" and instance.reference:
            expression = instance.reference.split("=")[0].strip()
            thinking = f"I need {instance.data.get('target')} from {instance.data.get('numbers')}.\nTry {expression}."
            answer = instance.reference
        else:
            raise ValueError(f"no rule-written cold-start traces for task {task.name!r}")
        completion = f"<think>\n{thinking}\n</think>\n<answer>\n{answer}\n</answer>"
        if template == "r1-zero":
            completion = completion[len("<think>") :]
        rows.append(
            {
                "prompt": prompt_for(task, instance, template),
                "completion": completion,
                "instance": instance.to_dict(),
            }
        )
    return rows


# ---------------------------------------------------------------------------- SFT


@dataclass(kw_only=True)
class SFTConfig:
    """Supervised fine-tuning (cold start, rejection-sampled SFT, distillation)."""

    learning_rate: float = 1e-5  # AdamW, constant after warmup
    batch_size: int = 8  # rows per optimizer step
    epochs: float = 2.0  # passes over the rows (R1's distillation: 2-3 epochs)
    max_steps: int | None = None  # overrides epochs when set
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    chunk_size: int = 1024
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a finite number > 0, got {self.learning_rate}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (math.isfinite(self.epochs) and self.epochs > 0) and self.max_steps is None:
            raise ValueError(f"epochs must be a finite number > 0, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError("max_steps must be >= 0")


def _encode(tokenizer: Any, prompt: Any) -> list[int]:
    if isinstance(prompt, str):
        return list(tokenizer(prompt)["input_ids"])
    ids = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def check_sft_rows(rows: Sequence[Any]) -> None:
    """Raise ValueError naming the first row that is not ``{"prompt": text or messages, "completion": text}``."""
    if not rows:
        raise ValueError("no SFT rows")
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or "prompt" not in row or "completion" not in row:
            raise ValueError(f"SFT row {number}: every row needs 'prompt' and 'completion'")
        prompt = row["prompt"]
        chat = isinstance(prompt, list) and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in prompt
        )
        if not (isinstance(prompt, str) or (chat and prompt)):
            raise ValueError(
                f"SFT row {number}: 'prompt' must be text or a list of {{role, content}} messages"
            )
        if not isinstance(row["completion"], str):
            raise ValueError(f"SFT row {number}: 'completion' must be text")


def sft_train(
    model: nn.Module,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    config: SFTConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    llm: Any = None,
) -> list[dict[str, float]]:
    """Fine-tune ``model`` in place on ``{"prompt", "completion"}`` rows; returns per-step metrics.

    The completion is tokenized after the prompt's tokens (no special tokens) and ends with the EOS token,
    so the model learns to stop. With ``out_dir``: metrics.jsonl and ``policy/`` (``save_pretrained``).
    """
    cfg = config or SFTConfig()
    if not rows:
        raise ValueError("no SFT rows")
    eos = tokenizer.eos_token_id
    examples = []
    check_sft_rows(rows)
    for row in rows:
        completion = list(tokenizer(str(row["completion"]), add_special_tokens=False)["input_ids"])
        if eos is not None:
            completion.append(int(eos))
        examples.append((_encode(tokenizer, row["prompt"]), completion))
    steps = (
        cfg.max_steps if cfg.max_steps is not None else math.ceil(cfg.epochs * len(examples) / cfg.batch_size)
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    rng = random.Random(cfg.seed)
    order: list[int] = []
    logger = None
    if out_dir is not None:
        from testtime.train.loggers import JsonlLogger

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "sft_config.json").write_text(json.dumps(asdict(cfg), indent=1))
        logger = JsonlLogger(Path(out_dir))
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="sft", unit="step")
    history = []
    model.train()
    for step in range(steps):
        start = time.perf_counter()
        batch = []
        for _ in range(min(cfg.batch_size, len(examples))):
            if not order:
                order = list(range(len(examples)))
                rng.shuffle(order)
            batch.append(examples[order.pop()])
        for group in optimizer.param_groups:
            group["lr"] = cfg.learning_rate * (
                min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
            )
        logps, mask = completion_logprobs(
            model, [b[0] for b in batch], [b[1] for b in batch], chunk_size=cfg.chunk_size
        )
        loss = -(logps * mask).sum() / mask.sum().clamp(min=1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        if llm is not None:
            from testtime.rl.trainer import updating_weights

            with updating_weights(llm):
                optimizer.step()
        else:
            optimizer.step()
        metrics = {
            "loss": float(loss.detach()),
            "tokens": float(mask.sum()),
            "step_seconds": time.perf_counter() - start,
        }
        history.append(metrics)
        if logger is not None:
            logger.log(metrics, step + 1)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}")
    if bar is not None:
        bar.close()
    if logger is not None:
        logger.close()
    model.eval()
    if out_dir is not None:
        policy = Path(out_dir) / "policy"
        model.save_pretrained(policy, safe_serialization=True)
        tokenizer.save_pretrained(policy)
    return history


# ---------------------------------------------------------------------------- rejection sampling


def rejection_sample(
    llm: Any,
    task: Task,
    instances: Sequence[Instance],
    *,
    num_samples: int = 4,
    temperature: float = 0.7,
    top_p: float = 1.0,
    max_tokens: int = 256,
    template: str = "chat",
    require_format: bool = False,
    seed: int = 0,
    per_instance: int | None = 1,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Sample, verify, keep the solved: SFT rows ``{"prompt", "completion", "instance", "task", "reward"}``.

    Args:
        llm: any LLM backend (the teacher).
        task: the verifier.
        instances: the problems.
        num_samples: completions per instance.
        temperature, top_p, max_tokens: sampling.
        template: the prompt template (see :func:`prompt_for`).
        require_format: also require R1's ``<think>``/``<answer>`` format.
        seed: sampling seed.
        per_instance: keep at most this many distinct solved completions per instance (None: all).

    Returns:
        ``(rows, stats)`` with ``stats`` = sampled, solved, kept, instances_solved.
    """
    prompts = [prompt_for(task, i, template) for i in instances]
    out = llm.generate(
        prompts,
        SamplingParams(n=num_samples, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed),
    )
    rows, solved, covered = [], 0, 0
    for instance, prompt, choices in zip(instances, prompts, out, strict=True):
        seen: set[str] = set()
        kept_here = 0
        for choice in choices:
            text = choice.text
            prefilled = isinstance(prompt, str) and prompt.rstrip().endswith("<think>")
            if not task.verify(instance, answer_text(text)).solved:
                continue
            solved += 1
            if require_format and not format_ok(text, prefilled_think=prefilled):
                continue
            if text.strip() in seen or (per_instance is not None and kept_here >= per_instance):
                continue
            seen.add(text.strip())
            kept_here += 1
            rows.append(
                {
                    "prompt": prompt,
                    "completion": text,
                    "instance": instance.to_dict(),
                    "task": task.name,
                    "reward": 1.0,
                }
            )
        covered += kept_here > 0
    stats = {
        "sampled": float(len(instances) * num_samples),
        "solved": float(solved),
        "kept": float(len(rows)),
        "instances_solved": float(covered),
    }
    return rows, stats


def write_jsonl(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write rows as JSON lines (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read JSON lines; raises ValueError naming the file and line of a bad row."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot read ({error.strerror})") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: each line must be a JSON object")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no rows")
    return rows
