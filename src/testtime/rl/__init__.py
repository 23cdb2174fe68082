"""The DeepSeek-R1 recipe (arXiv 2501.12948): GRPO with rule-based rewards, cold-start SFT, rejection sampling
and distillation, for transformers causal LMs, on the LLM layer (rollouts) and ``testtime.tasks`` (rewards).

Modules: :mod:`~testtime.rl.logprobs` (per-token log-probs with gradients), :mod:`~testtime.rl.grpo` (pure
loss and advantage functions), :mod:`~testtime.rl.rewards`, :mod:`~testtime.rl.trainer`,
:mod:`~testtime.rl.sft`, :mod:`~testtime.rl.eval`, :mod:`~testtime.rl.cli`, :mod:`~testtime.rl.demo`.
"""
