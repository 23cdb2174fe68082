"""Titans: neural long-term memory that learns at test time (Behrouz, Zhong, Mirrokni, arXiv 2501.00663).

- :mod:`testtime.titans.memory`: the neural memory (deep MLP, momentum, forgetting, chunked parallel scan).
- :mod:`testtime.titans.models`: LMM, MAC, MAG, MAL and the sliding-window baseline, with streaming state.
- :mod:`testtime.titans.config`: configurations with the paper's defaults and presets.
- :mod:`testtime.titans.niah`: S-NIAH and BABILong-style long-context tasks, generated offline.
- :mod:`testtime.titans.train`: registers ``titans-*`` models with the shared trainer.
"""

from testtime.titans.config import MemoryConfig, TitansConfig
from testtime.titans.memory import MemoryState, NeuralMemory
from testtime.titans.models import TitansLM, TitansState

__all__ = ["MemoryConfig", "MemoryState", "NeuralMemory", "TitansConfig", "TitansLM", "TitansState"]
