"""Titans: neural long-term memory that learns at test time (Behrouz, Zhong, Mirrokni, arXiv 2501.00663).

- :mod:`testtime.titans.memory`: the neural memory (deep MLP, momentum, forgetting, chunked parallel scan).
- :mod:`testtime.titans.config`: configurations with the paper's defaults and presets.
"""

from testtime.titans.config import MemoryConfig, TitansConfig
from testtime.titans.memory import MemoryState, NeuralMemory

__all__ = ["MemoryConfig", "MemoryState", "NeuralMemory", "TitansConfig"]
