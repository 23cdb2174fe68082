"""DeepSeek-V3 (DeepSeek-AI, arXiv 2412.19437): MLA, DeepSeekMoE with auxiliary-loss-free balancing, MTP.

Modules: ``config`` (hyper-parameters and presets), ``layers`` (RMSNorm, SwiGLU, YaRN RoPE), ``mla``
(expanded and absorbed attention, the latent cache), ``moe`` (routing, grouped experts, balance losses),
``balance`` (routing-bias update, MaxVio telemetry), ``model`` (the LM with its MTP modules), ``mtp`` (loss
schedule, self-speculative decoding), ``generate``, ``fp8`` (simulated FP8 GEMMs), ``convert`` (checkpoint
keys), ``train`` (the trainer plug-in), ``cli``, ``demo``.

``DeepSeekV3ForCausalLM.from_pretrained(path)`` loads transformers' / the release's checkpoint layout.
"""

from __future__ import annotations

from testtime.deepseek.config import DeepSeekV3Config
from testtime.deepseek.model import CausalLMOutput, DeepSeekV3ForCausalLM

__all__ = ["CausalLMOutput", "DeepSeekV3Config", "DeepSeekV3ForCausalLM"]
