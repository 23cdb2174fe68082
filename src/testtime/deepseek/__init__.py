"""DeepSeek-V3 (DeepSeek-AI, arXiv 2412.19437): MLA, DeepSeekMoE with auxiliary-loss-free balancing, MTP.

``DeepSeekV3ForCausalLM.from_pretrained(path)`` loads transformers' / the release's checkpoint layout.
"""

from __future__ import annotations

from testtime.deepseek.config import DeepSeekV3Config
from testtime.deepseek.model import CausalLMOutput, DeepSeekV3ForCausalLM

__all__ = ["CausalLMOutput", "DeepSeekV3Config", "DeepSeekV3ForCausalLM"]
