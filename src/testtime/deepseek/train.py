"""DeepSeek-V3 on the shared trainer (``testtime.train``): the registered model family ``deepseek-v3``.

The trainer passes next-token labels (``labels[:, i]`` follows position i) and calls
``after_optimizer_step()`` after every optimizer step; that hook runs the package's
:class:`~testtime.deepseek.balance.BalanceHook` built from the config: the auxiliary-loss-free bias update
(all-reduced under DDP) with its :class:`~testtime.deepseek.balance.GammaSchedule`, and lambda's
:class:`~testtime.deepseek.mtp.MTPWeightSchedule`.
"""

from __future__ import annotations

import torch

from testtime.deepseek.balance import BalanceHook
from testtime.deepseek.config import DeepSeekV3Config
from testtime.deepseek.model import CausalLMOutput, DeepSeekV3ForCausalLM

__all__ = ["DeepSeekV3ForTraining", "small_config"]


class DeepSeekV3ForTraining(DeepSeekV3ForCausalLM):
    """:class:`DeepSeekV3ForCausalLM` with the trainer's label convention and the bias-update hook.

    Args:
        config: the model config; ``bias_update_speed`` is gamma, applied until ``bias_update_stop_step``
            optimizer steps (None: always); ``mtp_loss_weight`` is lambda until ``mtp_weight_switch_step``,
            ``mtp_loss_weight_final`` after.
    """

    def __init__(self, config: DeepSeekV3Config) -> None:
        super().__init__(config)
        self.max_seq_len = config.max_position_embeddings
        self.optimizer_steps = 0
        self.balance_hook = BalanceHook.from_config(config)
        self.last_balance: dict[str, float] = {}

    def forward(
        self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: object
    ) -> CausalLMOutput:  # type: ignore[override]
        """Like :meth:`DeepSeekV3ForCausalLM.forward` with ``labels`` already shifted (next tokens)."""
        kwargs.setdefault("shift_labels", False)
        return super().forward(input_ids, labels, **kwargs)  # type: ignore[arg-type]

    def after_optimizer_step(self) -> None:
        """Update the routing biases with this step's gamma and set lambda for the next step."""
        self.last_balance = self.balance_hook(self, self.optimizer_steps)
        self.optimizer_steps += 1


def small_config() -> DeepSeekV3Config:
    """A byte-level model that trains in minutes on 2 cores: width 128, 4 layers (1 dense), 16 experts top-2."""
    return DeepSeekV3Config.tiny(
        vocab_size=257,
        hidden_size=128,
        intermediate_size=256,
        moe_intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        n_routed_experts=16,
        num_experts_per_tok=2,
        n_group=4,
        topk_group=2,
        kv_lora_rank=64,
        q_lora_rank=96,
        qk_rope_head_dim=16,
        qk_nope_head_dim=32,
        v_head_dim=32,
        max_position_embeddings=2048,
        rope_scaling=None,
        bias_update_speed=0.001,
    )


def _register() -> None:
    from testtime.train.registry import register_model

    def build(config: DeepSeekV3Config, vocab_size: int) -> DeepSeekV3ForTraining:
        return DeepSeekV3ForTraining(config.replace(vocab_size=vocab_size))

    register_model(
        "deepseek-v3",
        config_cls=DeepSeekV3Config,
        build=build,
        presets={
            "tiny": DeepSeekV3Config.tiny,
            "small": small_config,
            "v2_lite_16b": DeepSeekV3Config.v2_lite_16b,
            "v3_671b": DeepSeekV3Config.v3_671b,
        },
        default_preset="small",
        description="DeepSeek-V3: MLA + DeepSeekMoE (aux-loss-free balancing) + multi-token prediction",
    )


try:
    _register()
except ModuleNotFoundError as exc:  # the trainer is not installed: the model still works on its own
    if exc.name is None or not exc.name.startswith("testtime.train"):
        raise
