"""Mind Evolution's hyperparameters (Lee et al., arXiv 2501.09891, Table 1) and the open details as options.

Every field cites the paper where the paper fixes it; fields the paper leaves open say so and give the
choice made here (also listed in docs/fidelity/evolve.md). Presets: :meth:`EvolveConfig.paper` (Table 1,
the Gemini 1.5 Flash runs), :meth:`EvolveConfig.gemini_pro` (§4 "Models": the Gemini 1.5 Pro runs of the
paper's two-stage Flash -> Pro search, Table 1 with N_convs 8, N_seq 3, N_parent 10, Pr_no_parents 1/5),
:meth:`EvolveConfig.tiny` (a miniature for small local models and tests), and the Table 4 ablations via
:meth:`EvolveConfig.ablation`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from testtime.errors import UserError

__all__ = ["ABLATIONS", "EvolveConfig"]

# Table 4 of the paper: each ablation switches one component off.
ABLATIONS = ("no-critic", "no-feedback", "no-islands", "no-strategy-questions", "top-k-reset")


def _f(default: Any, help: str) -> Any:  # noqa: A002 - TRL-style help strings
    return field(default=default, metadata={"help": help})


@dataclass(kw_only=True)
class EvolveConfig:
    """Mind Evolution's settings (defaults: the paper's Table 1)."""

    num_generations: int = _f(10, "N_gens: the most generations (Table 1: 10).")
    num_islands: int = _f(4, "N_island: sub-populations evolved in order (Table 1: 4).")
    num_conversations: int = _f(5, "N_convs: conversations per island and generation (Table 1: 5).")
    num_turns: int = _f(4, "N_seq: refinement turns per conversation (Table 1: 4).")
    reset_interval: int = _f(3, "N_reset_interval: generations between island resets (Table 1: 3).")
    num_reset: int = _f(2, "N_reset: islands with the lowest mean score reset each time (Table 1: 2).")
    num_top: int = _f(5, "N_top: elites a reset island starts from (Table 1: 5).")
    num_candidates: int = _f(
        15, "N_candidate: global top candidates the LLM chooses the N_top diverse elites from (Table 1: 15)."
    )
    num_parents: int = _f(5, "N_parent: the most parents of a conversation (Table 1: 5).")
    prob_no_parents: float = _f(
        1 / 6, "Pr_no_parents: probability that a conversation starts without parents (Table 1: 1/6)."
    )
    num_emigrate: int = _f(5, "N_emigrate: top candidates copied to the next island (Table 1: 5).")
    num_retries: int = _f(
        5,
        "N_retries: retries of a failed or empty LLM call (Table 1: 5, which it describes as the tries of a "
        "turn before giving up); here they follow the first try, so a call is tried at most 1 + N_retries "
        "times.",
    )
    # -- details the paper leaves open -------------------------------------------------------------------
    selection_temperature: float = _f(
        0.1,
        "Boltzmann selection temperature T, P(i) ~ exp(score_i / T) (paper: softmax of fitness, T not "
        "given; scores here are in [0, 1], so T = 0.1 makes a 0.1 better score e times likelier).",
    )
    parent_count: Literal["uniform", "max"] = _f(
        "uniform",
        "How many parents when not zero (paper: 'up to N_parent'): 'uniform' draws 1..N_parent, 'max' "
        "takes N_parent (never more than the population).",
    )
    island_start: Literal["fresh", "migrants"] = _f(
        "fresh",
        "How islands 2..N start (paper silent): 'fresh' runs parent-free conversations in the first "
        "generation of every island (migrants from the previous island join its population); "
        "'migrants' lets islands 2..N select parents from the migrants they received.",
    )
    deduplicate: bool = _f(
        True,
        "Do not add a candidate whose answer text equals one already in the island (§3.2: duplicates are "
        "removed when a generation's children join the island); it is still logged and counted.",
    )
    early_stop: bool = _f(
        True,
        "Stop when a candidate is solved (§3.2: until a valid solution is found). The paper's Meeting "
        "Planning runs (§4.3) have no known optimum and run to N_gens: early_stop=False.",
    )
    # -- Table 4 ablation switches --------------------------------------------------------------------------
    critic: bool = _f(True, "RCC's critic turn (Table 4 'critic'); False: the author only.")
    textual_feedback: bool = _f(
        True, "Show the evaluator's textual feedback to the LLM (Table 4); False: scores only."
    )
    strategy_questions: bool = _f(
        True, "Strategy and question prompts in the critic's instructions (Table 4 'S/Q prompts')."
    )
    llm_reset: bool = _f(
        True, "Reset islands with N_top diverse elites chosen by the LLM (Table 4); False: plain top N_top."
    )
    migration: bool = _f(True, "Cyclic migration of the top N_emigrate to the next island (paper: on).")
    # -- answers ------------------------------------------------------------------------------------------------
    answer_marker: str = _f(
        "PROPOSED SOLUTION:",
        "The author's solution is the text after the last occurrence of this marker (whole text if absent).",
    )
    max_answer_chars: int = _f(
        20_000, "Longer answers are cut to this many characters before verification (a huge answer fails)."
    )
    max_prompt_chars: int = _f(
        2_000, "A parent's solution and feedback are cut to this many characters in prompts."
    )

    def __post_init__(self) -> None:
        for name in (
            "num_generations",
            "num_islands",
            "num_conversations",
            "num_turns",
            "reset_interval",
            "num_top",
            "num_candidates",
            "max_answer_chars",
            "max_prompt_chars",
        ):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_reset", "num_parents", "num_emigrate", "num_retries"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.num_reset >= self.num_islands and self.num_islands > 1:
            raise UserError(
                f"num_reset ({self.num_reset}) must be smaller than num_islands ({self.num_islands})"
            )
        if not 0.0 <= self.prob_no_parents <= 1.0:
            raise UserError(f"prob_no_parents must be in [0, 1], got {self.prob_no_parents}")
        if not 0 < self.selection_temperature < float("inf"):
            raise UserError(f"selection_temperature must be finite and > 0, got {self.selection_temperature}")
        if self.parent_count not in ("uniform", "max"):
            raise UserError(f"parent_count must be 'uniform' or 'max', got {self.parent_count!r}")
        if self.island_start not in ("fresh", "migrants"):
            raise UserError(f"island_start must be 'fresh' or 'migrants', got {self.island_start!r}")
        if self.num_top > self.num_candidates:
            raise UserError(f"num_top ({self.num_top}) must be <= num_candidates ({self.num_candidates})")

    # -- presets ------------------------------------------------------------------------------------------------
    @classmethod
    def paper(cls, **changes: Any) -> EvolveConfig:
        """Table 1 of the paper (its Gemini 1.5 Flash runs, §4 "Models"), duplicates removed (§3.2)."""
        return cls(**changes)

    @classmethod
    def gemini_pro(cls, **changes: Any) -> EvolveConfig:
        """The Gemini 1.5 Pro runs of the paper's two-stage search (§4, "Models"): Table 1 with N_convs 8,
        N_seq 3, N_parent 10 and Pr_no_parents 1/5 (at most 10 x 4 x 8 x 3 = 960 candidates). The paper
        runs them on the problems its Gemini 1.5 Flash search (Table 1) leaves unsolved within N_gens
        generations, the "(+pro)" rows of Tables 2 and 6 (:class:`testtime.evolve.TwoStage`). The model is
        the backend's choice (``--model``)."""
        base = dict(num_conversations=8, num_turns=3, num_parents=10, prob_no_parents=1 / 5)
        return cls(**{**base, **changes})

    @classmethod
    def tiny(cls, **changes: Any) -> EvolveConfig:
        """A miniature for small local models and tests: 2 generations x 2 islands x 2 conversations x 2
        turns (16 candidates), resets every generation of 1 island, 2 elites from 4, 2 parents, 2 migrants.
        It keeps duplicate answers in an island (``deduplicate=False``), as the recorded runs of
        experiments/evolve_mini did, so their logs still resume."""
        base = dict(
            num_generations=2,
            num_islands=2,
            num_conversations=2,
            num_turns=2,
            reset_interval=1,
            num_reset=1,
            num_top=2,
            num_candidates=4,
            num_parents=2,
            num_emigrate=2,
            num_retries=1,
            deduplicate=False,
        )
        return cls(**{**base, **changes})

    @classmethod
    def preset(cls, name: str, **changes: Any) -> EvolveConfig:
        """A preset by name: ``paper``, ``gemini-pro`` or ``tiny``."""
        presets = {"paper": cls.paper, "gemini-pro": cls.gemini_pro, "tiny": cls.tiny}
        if name not in presets:
            raise UserError(f"unknown preset {name!r}; presets: {', '.join(presets)}")
        return presets[name](**changes)

    def ablation(self, name: str) -> EvolveConfig:
        """This config with one Table 4 component off: ``no-critic``, ``no-feedback``, ``no-islands`` (one
        island with N_island x N_convs conversations, no migration or reset: the same candidates per
        generation), ``no-strategy-questions`` or ``top-k-reset`` (plain top-N_top elites)."""
        if name == "no-critic":
            return replace(self, critic=False)
        if name == "no-feedback":
            return replace(self, textual_feedback=False)
        if name == "no-islands":
            return replace(
                self,
                num_islands=1,
                num_conversations=self.num_islands * self.num_conversations,
                num_reset=0,
                migration=False,
            )
        if name == "no-strategy-questions":
            return replace(self, strategy_questions=False)
        if name == "top-k-reset":
            return replace(self, llm_reset=False)
        raise UserError(f"unknown ablation {name!r}; ablations: {', '.join(ABLATIONS)}")

    @property
    def max_candidates(self) -> int:
        """Candidates of a full run without early stop: N_gens x N_island x N_convs x N_seq (800 in Table 1)."""
        return self.num_generations * self.num_islands * self.num_conversations * self.num_turns

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def help(cls) -> dict[str, str]:
        """Each field's help string."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}
