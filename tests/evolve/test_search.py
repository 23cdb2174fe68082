"""Mind Evolution and its baselines with a seeded fake LLM: determinism, selection, migration, reset,
budgets, resume, failed answers, tasks and user evaluators."""

from __future__ import annotations

import asyncio
import json
import math
import random
from dataclasses import replace

import pytest

from testtime.evolve import (
    BestOfN,
    Budget,
    EvolveConfig,
    MindEvolution,
    OnePass,
    SequentialRevision,
    canonical,
    evaluate_safely,
    interval_union,
    lineage,
    make_method,
    read_log,
    render_lineage,
    task_evaluator,
)
from testtime.evolve.core import Candidate, Session
from testtime.evolve.log import RunLog
from testtime.evolve.mind_evolution import (
    boltzmann_probabilities,
    boltzmann_sample,
    island_means,
    lowest_islands,
    migrate,
)
from testtime.llm.fake import FakeLLM
from testtime.llm.protocol import SamplingParams

from .helpers import SeededFake, guess_evaluator

PARAMS = SamplingParams(temperature=1.0, max_tokens=16)
NO_STOP = EvolveConfig.tiny(early_stop=False, num_generations=3)


def _run(config, tmp_path, name="log.jsonl", llm=None, **kwargs):
    llm = llm or SeededFake()
    path = tmp_path / name
    result = MindEvolution(config).run(
        llm, "guess the digit", guess_evaluator(), params=PARAMS, log_path=str(path), **kwargs
    )
    return result, read_log(path)


# -- determinism -------------------------------------------------------------------------------------------------
def test_deterministic_under_a_seed_although_calls_finish_out_of_order(tmp_path):
    a, log_a = _run(NO_STOP, tmp_path, "a.jsonl", llm=SeededFake(delay=0.004), seed=3)
    b, log_b = _run(NO_STOP, tmp_path, "b.jsonl", llm=SeededFake(delay=0.004), seed=3)
    assert canonical(log_a) == canonical(log_b)
    assert a.summary()["calls"] == b.summary()["calls"] == NO_STOP.max_candidates + 2  # + 2 reset selections
    c, log_c = _run(NO_STOP, tmp_path, "c.jsonl", seed=4)
    assert canonical(log_c) != canonical(log_a)


# -- selection -------------------------------------------------------------------------------------------------------
def test_boltzmann_probabilities_match_a_hand_computation():
    scores, t = [0.0, 0.1, 0.5], 0.1
    weights = [1.0, math.e, math.e**5]
    want = [w / sum(weights) for w in weights]
    assert boltzmann_probabilities(scores, t) == pytest.approx(want, rel=1e-12)
    assert boltzmann_probabilities([3.0, 3.0], 0.5) == pytest.approx([0.5, 0.5])


def test_selection_frequencies_follow_the_softmax():
    scores, t, draws = [0.0, 0.1, 0.2, 0.35], 0.1, 20_000
    rng = random.Random(0)
    counts = [0] * len(scores)
    for _ in range(draws):
        counts[boltzmann_sample(scores, 1, t, rng)[0]] += 1
    expected = [p * draws for p in boltzmann_probabilities(scores, t)]
    chi2 = sum((c - e) ** 2 / e for c, e in zip(counts, expected, strict=True))
    assert chi2 < 16.27  # chi-square, 3 degrees of freedom, p = 0.001
    # several parents: distinct, and the first draw alone follows the softmax
    picks = boltzmann_sample(scores, 4, t, random.Random(1))
    assert sorted(picks) == [0, 1, 2, 3]


# -- migration and reset -----------------------------------------------------------------------------------------------
def _cand(cid, score, seq):
    return Candidate(id=cid, seq=seq, score=score, answer=cid)


def test_migration_copies_the_top_to_the_next_island_cyclically():
    islands = [[_cand(f"a{i}", s, i) for i, s in enumerate([0.1, 0.9, 0.5, 0.7])], [_cand("b0", 0.3, 10)], []]
    moved = migrate(islands, 0, 2)
    assert [c.id for c in moved] == ["a1", "a3"]
    assert [c.id for c in islands[1]] == ["b0", "a1", "a3"]
    assert len(islands[0]) == 4  # copied, not moved away
    migrate(islands, 2, 5)  # an empty island sends nothing
    assert [c.id for c in islands[0]] == ["a0", "a1", "a2", "a3"]
    islands[2] = [_cand("c0", 1.0, 20)]
    migrate(islands, 2, 1)  # the last island feeds the first
    assert islands[0][-1].id == "c0"
    assert migrate(islands, 2, 1) == []  # no duplicates


def test_reset_replaces_the_lowest_mean_islands_with_llm_chosen_elites(tmp_path):
    islands = [
        [_cand("a", 0.2, 0), _cand("b", 0.8, 1)],  # mean 0.5
        [_cand("c", 0.1, 2)],  # mean 0.1
        [_cand("d", 0.6, 3), _cand("e", 0.4, 4)],  # mean 0.5
    ]
    assert island_means(islands) == pytest.approx([0.5, 0.1, 0.5])
    assert lowest_islands(island_means(islands), 2) == [1, 0]  # ties: the lower index
    cfg = EvolveConfig.tiny(num_islands=3, num_reset=2, num_top=2, num_candidates=3)
    search = MindEvolution(cfg)
    llm = SeededFake(reset_answer="the most different are 3 and 1")
    session = Session(llm, guess_evaluator(), params=PARAMS, log=RunLog(None, {}), seed=0)
    asyncio.run(search._reset(session, "p", islands, generation=1))
    # global top 3 by score: b (0.8), d (0.6), e (0.4); the LLM picks 3 and 1 -> e, b
    assert [c.id for c in islands[1]] == ["e", "b"]
    assert [c.id for c in islands[0]] == ["e", "b"]
    assert [c.id for c in islands[2]] == ["d", "e"]  # the best-mean island is untouched
    select = [r for r in session.log.records if r.get("kind") == "select"]
    assert len(select) == 1 and select[0]["parents"] == ["b", "d", "e"]

    plain = MindEvolution(cfg.ablation("top-k-reset"))
    islands2 = [[_cand("a", 0.2, 0)], [_cand("c", 0.1, 2)], [_cand("d", 0.6, 3), _cand("e", 0.9, 4)]]
    asyncio.run(plain._reset(session, "p", islands2, generation=1))
    assert [c.id for c in islands2[1]] == ["e", "d"] and [c.id for c in islands2[0]] == ["e", "d"]


def test_islands_evolve_in_order_and_see_the_previous_islands_migrants(tmp_path):
    cfg = EvolveConfig.tiny(
        early_stop=False, island_start="migrants", num_generations=1, num_emigrate=1, prob_no_parents=0.0
    )
    result, log = _run(cfg, tmp_path)
    island0 = {r["id"]: r for r in log[1:] if r["island"] == 0}
    best0 = min(island0.values(), key=lambda r: (-r["score"], r["seq"]))
    firsts = [r for r in log[1:] if r["island"] == 1 and r["turn"] == 0]
    assert firsts and all(r["parents"] == [best0["id"]] for r in firsts)
    assert max(r["seq"] for r in island0.values()) < min(r["seq"] for r in firsts)


def test_parents_are_drawn_from_the_own_island_and_refinement_chains(tmp_path):
    result, log = _run(NO_STOP, tmp_path)
    records = {r["id"]: r for r in log[1:] if r["kind"] == "candidate"}
    for rec in records.values():
        if rec["turn"] > 0:
            assert rec["parents"] == [
                f"g{rec['generation']}-i{rec['island']}-c{rec['conversation']}-t{rec['turn'] - 1}"
            ]
        elif rec["generation"] == 1:
            assert rec["parents"] == []
        assert len(rec["parents"]) <= NO_STOP.num_parents
    best = result.best
    chain = lineage(log, best.id)
    assert chain[0]["id"] == best.id and all(p in records for r in chain for p in r["parents"])
    assert best.id in render_lineage(log, best.id)


# -- budgets and cost -----------------------------------------------------------------------------------------------------
def test_interval_union_counts_overlaps_once():
    assert interval_union([]) == 0
    assert interval_union([(0, 2), (1, 3), (5, 6)]) == 3 + 1
    assert interval_union([(0, 10), (2, 3), (4, 5)]) == 10
    assert interval_union([(1, 1), (3, 2)]) == 0


@pytest.mark.parametrize("cap", [1, 2, 5, 9, 17, 23])
@pytest.mark.parametrize("method", ["mind-evolution", "best-of-n", "sequential-revision+", "one-pass"])
def test_call_budget_is_never_exceeded(cap, method):
    search = make_method(method, calls=cap, config=EvolveConfig.tiny(early_stop=False, num_generations=4))
    llm = SeededFake()
    result = search.run(llm, "guess", guess_evaluator(target=99), params=PARAMS, budget=Budget(max_calls=cap))
    assert result.cost.calls <= cap
    assert llm.usage.calls == result.cost.calls
    if method != "one-pass":
        assert result.cost.calls == cap  # the whole budget is used when the search is larger


@pytest.mark.parametrize("cap", [40, 300, 1000])
def test_token_budget_is_never_exceeded(cap):
    llm = SeededFake()
    result = MindEvolution(EvolveConfig.tiny(early_stop=False)).run(
        llm,
        "guess",
        guess_evaluator(),
        params=PARAMS,
        budget=Budget(max_tokens=cap, price_input=0.5, price_output=2),
    )
    spent = result.cost.input_tokens + result.cost.output_tokens
    assert spent <= cap
    assert spent == llm.usage.total_tokens
    assert result.cost.price == pytest.approx(0.5 * result.cost.input_tokens + 2 * result.cost.output_tokens)


def test_wall_time_counts_concurrent_calls_once():
    llm = SeededFake(delay=0.05)
    cfg = EvolveConfig.tiny(early_stop=False, num_conversations=4, num_generations=1, num_islands=1)
    result = MindEvolution(cfg).run(llm, "guess", guess_evaluator(), params=PARAMS)
    summed = sum(c.end - c.start for c in result.candidates)
    assert result.cost.wall_seconds < 0.75 * summed


# -- resume -----------------------------------------------------------------------------------------------------------------
class Killed(BaseException):
    """Stands for the process being killed."""


class KillAfter(SeededFake):
    def __init__(self, calls: int) -> None:
        super().__init__(delay=0.002)
        self.left = calls

    async def _agenerate(self, prompts, params):
        self.left -= 1
        if self.left < 0:
            raise Killed()
        return await super()._agenerate(prompts, params)


@pytest.mark.parametrize("kill_after", [3, 9, 14])
def test_a_killed_run_resumes_to_the_same_log(tmp_path, kill_after):
    whole, log_whole = _run(NO_STOP, tmp_path, "whole.jsonl", seed=1)
    path = tmp_path / "killed.jsonl"
    with pytest.raises(Killed):
        MindEvolution(NO_STOP).run(
            KillAfter(kill_after),
            "guess the digit",
            guess_evaluator(),
            params=PARAMS,
            log_path=str(path),
            seed=1,
        )
    with open(path, "a") as handle:
        handle.write('{"kind": "candidate", "id": "g9-i9-c')  # a line cut short by the kill
    done = len(read_log(path)) - 1
    assert 0 < done < len(log_whole) - 1
    llm = SeededFake()
    resumed = MindEvolution(NO_STOP).run(
        llm, "guess the digit", guess_evaluator(), params=PARAMS, log_path=str(path), seed=1
    )
    assert canonical(read_log(path)) == canonical(log_whole)
    assert llm.usage.calls == whole.cost.calls - done  # nothing asked twice
    assert resumed.cost.calls == whole.cost.calls and resumed.cost.cached_calls == done
    assert resumed.best.id == whole.best.id


def test_resume_refuses_a_log_of_another_run(tmp_path):
    _run(NO_STOP, tmp_path, "x.jsonl", seed=1)
    from testtime.errors import UserError

    with pytest.raises(UserError, match="different run"):
        _run(NO_STOP, tmp_path, "x.jsonl", seed=2)
    (tmp_path / "bad.jsonl").write_text('{"kind": "header"}\nnot json\n{"a": 1}\n')
    with pytest.raises(UserError, match="line 2"):
        read_log(tmp_path / "bad.jsonl")


# -- failed answers ---------------------------------------------------------------------------------------------------------------
class Garbage(SeededFake):
    """Cycles through an empty answer, a huge one, binary junk, an exception and a good answer."""

    async def _agenerate(self, prompts, params):
        kind = (params.seed or 0) % 5
        if kind == 3:
            raise ConnectionError("server went away")
        out = await super()._agenerate(prompts, params)
        text = ["", "x " * 30_000, "\x00\xff\ufffd<answer>", None, out[0][0].text][kind]
        out[0][0].text = text
        return out


def test_garbage_answers_and_errors_are_failed_candidates_and_never_end_a_run():
    cfg = EvolveConfig.tiny(early_stop=False, num_retries=0, max_answer_chars=1000)
    result = MindEvolution(cfg).run(Garbage(), "guess", guess_evaluator(), params=PARAMS)
    assert len(result.candidates) == cfg.max_candidates
    errors = [c.error for c in result.candidates if c.error]
    assert any("empty" in e for e in errors) and any("exceeds" in e for e in errors)
    assert any("ConnectionError" in e for e in errors)
    for c in result.candidates:
        if c.error:
            assert c.score == 0 and not c.solved and "no valid answer" in c.feedback


def test_retries_spend_budget_and_stop_at_num_retries():
    class AlwaysFails(SeededFake):
        async def _agenerate(self, prompts, params):
            raise RuntimeError("boom")

    result = OnePass(num_retries=3).run(AlwaysFails(), "p", guess_evaluator(), params=PARAMS)
    assert result.cost.calls == 4 and result.candidates[0].attempts == 4
    capped = OnePass(num_retries=3).run(
        AlwaysFails(), "p", guess_evaluator(), params=PARAMS, budget=Budget(max_calls=2)
    )
    assert capped.cost.calls == 2


def test_a_failing_evaluator_gives_failed_verdicts():
    def raises(answer):
        raise KeyError("oops")

    assert evaluate_safely(raises, "x") == (0.0, "evaluator error: KeyError: 'oops'", False)
    assert evaluate_safely(lambda a: (float("nan"), "", False), "x")[0] == 0.0
    assert evaluate_safely(lambda a: (7, "over", False), "x") == (math.nextafter(1.0, 0.0), "over", False)
    assert evaluate_safely(lambda a: (0.25, "ok", True), "x") == (1.0, "ok", True)
    assert evaluate_safely(lambda a: "not a tuple", "x")[2] is False


# -- baselines ----------------------------------------------------------------------------------------------------------------------
def test_best_of_n_stops_at_the_first_solved_wave():
    llm = SeededFake()
    result = BestOfN(n=100, wave_size=4).run(llm, "guess", guess_evaluator(), params=PARAMS)
    first = next(c for c in result.candidates if c.solved)
    assert result.solved and result.calls_to_solve == first.seq + 1
    assert len(result.candidates) == 4 * (first.seq // 4 + 1)


def test_sequential_revision_revises_each_thread_with_feedback():
    llm = SeededFake()
    result = SequentialRevision(num_threads=3, num_turns=4, history_turns=1).run(
        llm, "guess", guess_evaluator(target=99), params=PARAMS
    )
    assert len(result.candidates) == 12
    for c in result.candidates:
        assert c.parents == ([] if c.turn == 0 else [f"r{c.conversation}-t{c.turn - 1}"])
        if c.turn >= 2:
            assert len(c.prompt) == 3  # the first message and the last exchange
            assert "too low" in c.prompt[-1]["content"]


def test_ablations_change_the_prompts():
    base = EvolveConfig.tiny(early_stop=False, num_generations=2, prob_no_parents=0.0)
    texts = {}
    for name in ("", "no-critic", "no-feedback", "no-strategy-questions"):
        cfg = base.ablation(name) if name else base
        result = MindEvolution(cfg).run(SeededFake(), "guess", guess_evaluator(), params=PARAMS)
        texts[name] = " ".join(m["content"] for c in result.candidates for m in c.prompt)
    assert "CRITIC" in texts[""] and "CRITIC" not in texts["no-critic"]
    assert "too" in texts[""] and "Evaluator feedback" not in texts["no-feedback"]
    assert "Which constraints" in texts[""] and "Which constraints" not in texts["no-strategy-questions"]
    flat = base.ablation("no-islands")
    assert (
        flat.num_islands == 1 and flat.num_conversations == 4 and flat.max_candidates == base.max_candidates
    )


# -- tasks and user evaluators ---------------------------------------------------------------------------------------------------------
def test_a_testtime_task_plugs_in():
    from testtime.tasks import get_task

    task = get_task("countdown")
    instance = task.instances(seed=0, n=1, num_numbers=3)[0]
    llm = FakeLLM(
        lambda text, i: f"PROPOSED SOLUTION: {instance.reference}" if "Proposal" in text else "no idea"
    )
    result = MindEvolution(EvolveConfig.tiny()).run(
        llm, task.prompt(instance), task_evaluator(task, instance), params=PARAMS
    )
    assert result.solved and result.stopped == "solved"
    assert result.best.parents  # solved by a conversation that started from parents
    assert all(json.dumps(c.to_record()) for c in result.candidates)


def test_a_user_evaluator_with_textual_feedback_plugs_in():
    seen = []

    def evaluate(answer):
        seen.append(answer)
        return 0.25, "say the magic word", answer == "please"

    llm = FakeLLM(
        lambda text, i: "PROPOSED SOLUTION: please" if "magic word" in text else "PROPOSED SOLUTION: no"
    )
    result = MindEvolution(EvolveConfig.tiny()).run(llm, "ask nicely", evaluate, params=PARAMS)
    assert result.solved and seen[0] == "no" and result.best.answer == "please"
    assert result.best.score == 1.0 and result.calls_to_solve == 3


def test_concurrent_and_sequential_calls_give_the_same_log(tmp_path):
    llm = SeededFake(delay=0.003)
    a = MindEvolution(NO_STOP).run(
        llm, "guess", guess_evaluator(), params=PARAMS, log_path=str(tmp_path / "a")
    )
    b = MindEvolution(NO_STOP).run(
        SeededFake(),
        "guess",
        guess_evaluator(),
        params=PARAMS,
        log_path=str(tmp_path / "b"),
        concurrent=False,
    )
    assert canonical(read_log(tmp_path / "a")) == canonical(read_log(tmp_path / "b"))
    assert a.summary()["calls"] == b.summary()["calls"]


def test_deduplicate_keeps_one_copy_of_an_answer_in_an_island():
    cfg = EvolveConfig.tiny(
        early_stop=False,
        deduplicate=True,
        prob_no_parents=0.0,
        parent_count="max",
        num_reset=0,
        migration=False,
    )
    llm = SeededFake(fixed="PROPOSED SOLUTION: 3")
    result = MindEvolution(cfg).run(llm, "guess", guess_evaluator(), params=PARAMS)
    second = [c for c in result.candidates if c.generation == 2 and c.turn == 0]
    assert second and all(c.parents == [f"g1-i{c.island}-c0-t0"] for c in second)
    plain = MindEvolution(replace(cfg, deduplicate=False)).run(
        SeededFake(fixed="PROPOSED SOLUTION: 3"), "guess", guess_evaluator(), params=PARAMS
    )
    assert all(len(c.parents) == 2 for c in plain.candidates if c.generation == 2 and c.turn == 0)


def test_a_slow_verifier_runs_off_the_event_loop():
    """While a (blocking) verifier works, the event loop keeps running: a coroutine beside the search gets
    to run during every verification, and the verifications of one turn overlap."""
    import threading

    verifying, loop_ran = threading.Event(), threading.Event()
    blocked, overlap, active = [], [], [0]
    lock = threading.Lock()

    def slow(answer):
        with lock:
            active[0] += 1
            overlap.append(active[0])
        verifying.set()
        if not loop_ran.wait(timeout=10):  # only the event loop's ticker sets it
            blocked.append(answer)
        threading.Event().wait(0.05)
        with lock:
            active[0] -= 1
        return guess_evaluator()(answer)

    async def main():
        done = asyncio.Event()

        async def ticker():
            while not done.is_set():
                if verifying.is_set():
                    loop_ran.set()
                await asyncio.sleep(0.001)

        tick = asyncio.create_task(ticker())
        config = EvolveConfig.tiny(early_stop=False, num_generations=1, num_islands=1, num_conversations=4)
        result = await MindEvolution(config).arun(SeededFake(), "guess", slow, params=PARAMS, seed=3)
        done.set()
        await tick
        return result

    result = asyncio.run(main())
    assert not blocked and len(result.candidates) == 8
    assert max(overlap) > 1  # the 4 conversations' verifications of a turn run at the same time
