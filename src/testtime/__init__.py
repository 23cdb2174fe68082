"""testtime: the test-time compute systems of early 2025 in PyTorch.

Titans (neural memory that learns at test time), Mind Evolution (evolutionary search over LLM answers),
Transformer² (singular-value fine-tuning and two-pass self-adaptation), DeepSeek-V3 (MLA, DeepSeekMoE,
multi-token prediction) and DeepSeek-R1 (GRPO with rule-based rewards). See the README.
"""

__version__ = "0.1.0"
