"""The presets against the paper's numbers (arXiv 2501.09891: Table 1; §4 "Models" for the Gemini 1.5 Pro
runs; §3.2 for duplicates) and the two-stage search with two fake models."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from testtime.evolve import EvolveConfig, TwoStage, canonical, read_log
from testtime.evolve.cost import Budget
from testtime.evolve.two_stage import stage_log_paths
from testtime.llm.protocol import SamplingParams

from .helpers import SeededFake, guess_evaluator

PARAMS = SamplingParams(temperature=1.0, max_tokens=16)

TABLE_1 = dict(
    num_generations=10,
    num_islands=4,
    num_conversations=5,
    num_turns=4,
    reset_interval=3,
    num_reset=2,
    num_top=5,
    num_candidates=15,
    num_parents=5,
    prob_no_parents=1 / 6,
    num_emigrate=5,
    num_retries=5,
)
# §4 "Models": "N_convs = 8, N_seq = 3, N_parent = 10, Pr_no_parents = 1/5" for the Pro model.
PRO_OVERRIDES = dict(num_conversations=8, num_turns=3, num_parents=10, prob_no_parents=1 / 5)


def test_paper_preset_is_table_1_with_duplicates_removed():
    cfg = asdict(EvolveConfig.paper())
    assert {k: cfg[k] for k in TABLE_1} == TABLE_1
    assert cfg["deduplicate"] is True  # §3.2: "with duplicate solutions removed"
    assert EvolveConfig.paper().max_candidates == 800  # Table 1's caption


def test_gemini_pro_preset_is_table_1_with_the_papers_pro_overrides():
    pro = asdict(EvolveConfig.gemini_pro())
    assert {k: pro[k] for k in PRO_OVERRIDES} == PRO_OVERRIDES
    rest = {k: v for k, v in TABLE_1.items() if k not in PRO_OVERRIDES}
    assert {k: pro[k] for k in rest} == rest
    paper = asdict(EvolveConfig.paper())
    # nothing else differs from the Flash runs
    assert {k for k in pro if pro[k] != paper[k]} == set(PRO_OVERRIDES)
    assert EvolveConfig.gemini_pro().max_candidates == 10 * 4 * 8 * 3 == 960
    assert asdict(EvolveConfig.preset("gemini-pro")) == pro
    assert EvolveConfig.gemini_pro(num_generations=2).num_generations == 2  # changes still apply


def test_tiny_keeps_its_recorded_settings():
    assert EvolveConfig.tiny().deduplicate is False and EvolveConfig.tiny().max_candidates == 16


def test_two_stage_skips_the_second_model_when_the_first_solves(tmp_path):
    first, second = SeededFake(fixed="PROPOSED SOLUTION: 7"), SeededFake()
    result = TwoStage(EvolveConfig.tiny(), EvolveConfig.tiny()).run(
        first, "guess the digit", guess_evaluator(), second_llm=second, params=PARAMS,
        log_path=str(tmp_path / "run.jsonl"),
    )  # fmt: skip
    assert result.solved and result.second is None and result.summary()["solved_in_stage"] == 1
    assert second.usage.calls == 0 and not (tmp_path / "run.stage2.jsonl").exists()
    assert result.cost.calls == result.first.cost.calls


def test_two_stage_gives_the_unsolved_problem_to_the_second_model(tmp_path):
    first = SeededFake(fixed="PROPOSED SOLUTION: 3")  # never right
    second = SeededFake(fixed="PROPOSED SOLUTION: 7")
    second_cfg = EvolveConfig.tiny(num_conversations=3)
    path = tmp_path / "run.jsonl"
    result = TwoStage(EvolveConfig.tiny(), second_cfg).run(
        first, "guess the digit", guess_evaluator(), second_llm=second, params=PARAMS, seed=2,
        budget=Budget(max_calls=10, price_input=1.0), second_budget=Budget(max_calls=5, price_input=2.0),
        log_path=str(path),
    )  # fmt: skip
    assert not result.first.solved and result.first.cost.calls == 10  # its own cap
    assert result.second is not None and result.second.solved and result.solved
    assert result.summary()["solved_in_stage"] == 2 and result.best.answer == "7"
    assert result.cost.calls == result.first.cost.calls + result.second.cost.calls
    assert result.second.cost.price == pytest.approx(2.0 * result.second.cost.input_tokens)
    one, two = stage_log_paths(path)
    assert read_log(one)[0]["settings"]["num_conversations"] == 2
    assert read_log(two)[0]["settings"]["num_conversations"] == 3
    # a rerun reads both stages back from their logs and asks neither model again
    logs_before = canonical(read_log(one)), canonical(read_log(two))
    again_first, again_second = (
        SeededFake(fixed="PROPOSED SOLUTION: 3"),
        SeededFake(fixed="PROPOSED SOLUTION: 7"),
    )
    again = TwoStage(EvolveConfig.tiny(), second_cfg).run(
        again_first, "guess the digit", guess_evaluator(), second_llm=again_second, params=PARAMS, seed=2,
        budget=Budget(max_calls=10, price_input=1.0), second_budget=Budget(max_calls=5, price_input=2.0),
        log_path=str(path),
    )  # fmt: skip
    assert again_first.usage.calls == 0 and again_second.usage.calls == 0
    assert again.solved and (canonical(read_log(one)), canonical(read_log(two))) == logs_before


def test_stage_log_paths():
    assert stage_log_paths("runs/a.jsonl") == ("runs/a.stage1.jsonl", "runs/a.stage2.jsonl")
    assert stage_log_paths("runs/a") == ("runs/a.stage1.jsonl", "runs/a.stage2.jsonl")
