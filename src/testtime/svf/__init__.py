"""Transformer² (Sun, Cetin, Tang, arXiv 2501.06252): SVF experts trained with RL, two-pass self-adaptation.

- :mod:`testtime.svf.svf`: the decomposition, z vectors, factored and merged forwards, export;
- :mod:`testtime.svf.experts`: experts on disk with their provenance;
- :mod:`testtime.svf.reinforce`: expert training (REINFORCE with a KL penalty, next-token ablation, LoRA);
- :mod:`testtime.svf.adapt`: the two-pass strategies (prompt, classification expert, few-shot CEM).

See docs/svf.md and docs/fidelity/svf.md.
"""

from testtime.svf.experts import Expert, expert_from_svf, load_expert, save_expert
from testtime.svf.svf import SVF, SVFConfig, SVFLinear, decompose, select_targets

__all__ = [
    "SVF",
    "Expert",
    "SVFConfig",
    "SVFLinear",
    "decompose",
    "expert_from_svf",
    "load_expert",
    "save_expert",
    "select_targets",
]
