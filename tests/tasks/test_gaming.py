"""Answers written to game a verifier without solving the problem, and the legitimate phrasings next to them.

Each verifier is a reward: an answer that scores without solving teaches RL and search to write it. These
cases were found by attacking each task (hedges, duplicate fields, number-format tricks, invisible
characters, stated costs, partial credit for no work); the attacking answers scored before the fix that
closes them, except the few that pin down a choice (TravelPlanner's stated costs) or guard a case
math-verify already refused. The legitimate phrasings beside them must keep passing.
"""

from __future__ import annotations

import json
import re

import pytest

from testtime.tasks import Instance, Task, get_task
from testtime.tasks.parsing import extract_json, find_json, hedged, last_number, read_number


def _arithmetic(gold: int) -> Instance:
    return Instance(task="arithmetic", id="x", data={"expression": "?", "answer": gold})


def _gsm8k(gold: str) -> Instance:
    return Instance(task="gsm8k", id="x", data={"question": "?", "answer": gold, "solution": f"#### {gold}"})


# -- numbers ------------------------------------------------------------------------------------------------
def test_commas_are_thousands_separators_only() -> None:
    assert read_number("4,370") == 4370 and read_number("1,234,567") == 1234567
    assert read_number("12,345.5") == 12345.5 and read_number("-1,000") == -1000
    for malformed in ("4,37", "1,2345", "12,34,567", "437½", "437²"):
        assert read_number(malformed) is None, malformed
    assert last_number("The answer is 4,37.") == "4,37"  # as written: reading it fails
    assert last_number("The answer is 437, as shown.") == "437"
    assert last_number("1,234,567.") == "1234567"


@pytest.mark.parametrize(
    "answer",
    [
        "The answer is 4,37.",  # a decimal comma, or a malformed thousands group: not 437
        "The answer is 43,7.",
        "The answer is 437½.",  # 437.5
        "The answer is 437².",
        "The answer is ±437.",  # two results
        "The answer is \\pm 437",
        "The answer is +/- 437.",
        "The answer is \u2212437.",  # a minus sign: -437
        "The answer is \uff0d437.",
        "The answer is 1/437.",  # a fraction was read by its denominator
        "436 o\u200br 437",  # an "or" with a zero-width space inside (no marker: read as "436 437")
    ],
)
def test_arithmetic_number_tricks_do_not_pay(answer: str) -> None:
    verdict = get_task("arithmetic").verify(_arithmetic(437), answer)
    assert not verdict.solved and verdict.score == 0.0, (answer, verdict.feedback)


@pytest.mark.parametrize(
    "answer",
    [
        "The answer is 437.",
        "The answer is 437 apples.",
        "**Answer:** 437",
        "\\boxed{437}",
        "The answer is +437.",
        "The answer is 437.0",
        "The answer is 874/2.",
        "The answer is \\frac{874}{2}.",
        "The answer is ٤٣٧.",
        "The answer is ４３７.",
        "The answer is 4\u200b37.",
        "598 + 100 - 261 = 437",
    ],
)
def test_arithmetic_legitimate_phrasings_pass(answer: str) -> None:
    assert get_task("arithmetic").verify(_arithmetic(437), answer).solved, answer


def test_negative_results_read_with_any_minus_sign() -> None:
    task = get_task("arithmetic")
    for answer in ("The answer is -437.", "The answer is \u2212437.", "The answer is \uff0d437."):
        assert task.verify(_arithmetic(-437), answer).solved, answer
    assert task.verify(_arithmetic(4370), "The answer is 4,370.").solved
    assert task.verify(_arithmetic(1234567), "The answer is 1,234,567.").solved


def test_hedge_rule_reads_fractions_and_plus_minus() -> None:
    assert hedged("The answer is 3/4.") is None
    assert hedged("The answer is \\frac{3}{4}.") is None
    assert hedged("The answer is 1/2 or 3/4.") == ("1/2", "3/4")
    assert hedged("The answer is ±437") == ("-437", "+437")
    assert hedged("The error is ±2 minutes, so the total is 437.") is None  # ± not on the final number


@pytest.mark.parametrize(
    "answer", ["\\boxed{\\pm 240}", "The answer is ±240.", "The answer is 2,40.", "\\boxed{2,40}", "2,40"]
)
def test_gsm8k_number_tricks_do_not_pay(answer: str) -> None:
    verdict = get_task("gsm8k").verify(_gsm8k("240"), answer)
    assert not verdict.solved, (answer, verdict.feedback)


def test_gsm8k_exact_fallback_reads_thousands_only() -> None:
    from testtime.tasks.gsm8k import _exact

    assert _exact("4370", "4370") and _exact("1/2", "0.5")
    assert not _exact("4,37", "437") and not _exact("437½", "437") and not _exact(None, "437")


# -- JSON answers ---------------------------------------------------------------------------------------------
def test_json_with_a_repeated_key_is_no_answer() -> None:
    assert find_json('[{"city": "Rome", "city": "Paris"}]') == (None, True)
    assert extract_json('{"plan": [{"a": 1, "a": 2}]}') is None
    assert extract_json('[{"city": "Rome", "days": "1-3"}]') == [{"city": "Rome", "days": "1-3"}]
    assert find_json('text {"a": 1} more') == ({"a": 1}, False)


def test_trip_plan_with_a_repeated_key_scores_zero() -> None:
    task = get_task("trip-planning")
    instance = task.instances(seed=0, n=1)[0]
    plan = json.loads(instance.reference)
    assert task.verify(instance, json.dumps(plan)).solved
    other = plan[1]["city"]
    head = json.dumps(plan[0])  # {"city": "A", "days": "1-3"}: add a second "city"
    forged = json.dumps(plan).replace(head, head[:-1] + f', "city": "{other}"}}', 1)
    assert forged.count(f'"{other}"') == 2
    verdict = task.verify(instance, forged)
    assert not verdict.solved and verdict.score == 0.0


# -- meeting planning -----------------------------------------------------------------------------------------
def _meeting() -> tuple[Task, Instance, str]:
    task = get_task("meeting-planning")
    instance = task.instances(seed=0, n=1)[0]
    return task, instance, instance.reference or ""


def _first_meeting(reference: str) -> str:
    match = re.search(r"from \d{1,2}:\d{2}[AP]M to \d{1,2}:\d{2}[AP]M\.", reference)
    assert match
    return match.group()


@pytest.mark.parametrize(
    "hedge",
    [
        "{range} or from 11:00PM to 11:30PM.",  # read by its first range, it scored 1.0
        "{range}, 11:00PM to 11:30PM.",
        "{range} and from 11:00PM to 11:30PM.",
        "{range} / from 8:00PM to 8:15PM.",
    ],
)
def test_meeting_with_two_ranges_is_a_hedge(hedge: str) -> None:
    task, instance, reference = _meeting()
    first = _first_meeting(reference)
    answer = reference.replace(first, hedge.format(range=first[:-1]), 1)
    verdict = task.verify(instance, answer)
    assert not verdict.solved and verdict.score == 0.0, verdict.feedback
    assert "alternatives" in verdict.feedback


def test_meeting_alternatives_in_other_steps_are_hedges() -> None:
    task, instance, reference = _meeting()
    for answer in (
        reference.replace("You wait until", "You wait until 9:30AM or", 1),
        reference.replace("and arrive at", "and arrive at 9:40AM or", 1),
        reference + " Alternatively, you meet David from 1:00PM to 1:15PM.",
    ):
        verdict = task.verify(instance, answer)
        assert verdict.score == 0.0, answer


def test_meeting_legitimate_phrasings_pass() -> None:
    task, instance, reference = _meeting()
    body = reference.removeprefix("SOLUTION: ")
    first = _first_meeting(reference)  # a remark with a range in other words is no alternative
    for answer in (
        reference,
        body,  # no marker
        "I could meet David at 10:15AM or later; Irene at 11:30AM.\nSOLUTION: " + body,  # reasoning first
        "Options: 9:30AM or 10:00AM.\n" + body,
        reference.replace(". You", ".\nYou"),
        reference.replace("AM", " a.m.").replace("PM", " p.m."),
        reference + " This meets every friend, finishing at 6:50PM.",
        reference.replace(first, first[:-1] + " (David is free 10:15AM-11:00AM).", 1),
    ):
        assert task.verify(instance, answer).solved, answer


# -- TravelPlanner --------------------------------------------------------------------------------------------
def _travel(kind: str) -> tuple[Task, Instance, list[dict]]:
    """An instance whose gold plan travels by ``kind`` ("Flight Number" or "Self-driving")."""
    task = get_task("travelplanner")
    for instance in task.instances(seed=0):
        plan = json.loads(instance.reference or "[]")
        if (
            any(kind in str(day.get("transportation")) for day in plan)
            and task.verify(instance, instance.reference).solved
        ):
            return task, instance, plan
    raise AssertionError(kind)


def _lodging_day(plan: list[dict]) -> int:
    return next(i for i, day in enumerate(plan) if str(day.get("accommodation", "-")).strip() != "-")


def test_travelplanner_repeated_fields_are_no_plan() -> None:
    task, instance, plan = _travel("Self-driving")
    i = _lodging_day(plan)
    gold = json.dumps(plan[i]["accommodation"])
    text = json.dumps(plan)
    field = f'"accommodation": {gold}'
    assert field in text
    # JSON: the first value is nonsense, the last (the gold one) won silently
    forged = text.replace(field, f'"accommodation": "Nowhere Inn, Atlantis", {field}', 1)
    # a Python literal (read by ast.literal_eval), and "attraction" next to "attractions"
    literal = str(plan).replace(
        f"'accommodation': {plan[i]['accommodation']!r}",
        f"'accommodation': 'X, Y', 'accommodation': {plan[i]['accommodation']!r}",
        1,
    )
    both = text.replace('"attraction":', '"attractions": "-", "attraction":', 1)
    for answer in (forged, literal, both):
        assert answer != text
        verdict = task.verify(instance, answer)
        assert not verdict.solved and verdict.score == 0.0, verdict.feedback
        assert "twice" in verdict.feedback
    blocks = "\n".join(
        f"Day {n}:\n"
        + "\n".join(f"{k.replace('_', ' ').title()}: {v}" for k, v in day.items() if k != "days")
        for n, day in enumerate(plan, 1)
    )
    assert task.verify(instance, blocks).solved  # the text-block form is read
    repeated = blocks.replace("Accommodation:", "Accommodation: Nowhere Inn, Atlantis\nAccommodation:", 1)
    assert task.verify(instance, repeated).score == 0.0


def test_travelplanner_one_item_per_slot() -> None:
    task, instance, plan = _travel("Flight Number")
    hedges = []
    i = _lodging_day(plan)
    city = plan[i]["accommodation"].rpartition(",")[2].strip()
    two_hotels = [dict(day) for day in plan]
    two_hotels[i]["accommodation"] += f"; Nowhere Inn, {city}"  # only the first was charged and checked
    hedges.append(two_hotels)
    j = next(k for k, day in enumerate(plan) if "Flight Number" in day["transportation"])
    legs = [dict(day) for day in plan]
    legs[j]["transportation"] += "; Self-driving, from A to B"  # the drive was neither charged nor a conflict
    hedges.append(legs)
    k = next(k for k, day in enumerate(plan) if str(day.get("dinner", "-")).strip() != "-")
    meals = [dict(day) for day in plan]
    meals[k]["dinner"] += "; " + next(
        d["lunch"] for d in plan if str(d.get("lunch", "-")).strip() not in ("-", plan[k]["dinner"])
    )
    hedges.append(meals)
    for hedge in hedges:
        verdict = task.verify(instance, json.dumps(hedge))
        assert not verdict.solved, verdict.feedback
        assert "choose one" in verdict.feedback


def test_travelplanner_costs_are_recomputed_whatever_the_answer_states() -> None:
    """The choice for stated costs: the budget is checked against the costs of the items the plan names,
    taken from the reference information; a cost the answer states (in a transportation string, a "cost"
    field, a total) is ignored, so it can neither rescue an over-budget plan nor sink a good one. (The
    benchmark's own gold plans state self-driving and taxi costs that differ from the reference information
    by a few dollars, so a stated cost cannot be required to match.)"""
    task, instance, plan = _travel("Self-driving")
    data = dict(instance.data)
    tight = Instance(
        task=instance.task, id=instance.id, reference=instance.reference,
        data={**data, "constraints": {**data["constraints"], "budget": 10}},
    )  # fmt: skip
    cheap = [dict(day) for day in plan]
    for day in cheap:
        day["transportation"] = re.sub(r"cost: [\d,]+", "cost: 0", day["transportation"])
        day["cost"] = "$0"
    claim = json.dumps(cheap) + "\nTotal cost: $5, within the budget of $10."
    verdict = task.verify(tight, claim)
    assert not verdict.solved and "budget" in verdict.feedback
    assert task.verify(instance, claim).solved  # the same statements do not hurt a plan within budget


# -- Countdown ------------------------------------------------------------------------------------------------
def _countdown() -> tuple[Task, Instance, str]:
    task = get_task("countdown")
    instance = task.instances(seed=2, n=1)[0]
    return task, instance, (instance.reference or "").split("=")[0].strip()


def test_countdown_several_expressions_are_a_hedge() -> None:
    task, instance, solution = _countdown()
    a, b, c = instance.data["numbers"][:3]
    for answer in (
        f"<answer>{a} + {b} or {solution}</answer>",  # the longest was read: solved
        f"<answer>{solution} or {a} + {b}</answer>",
        f"<answer>{solution}, {a} * {b} * {c}</answer>",
    ):
        verdict = task.verify(instance, answer)
        assert verdict.score == 0.0 and "expressions" in verdict.feedback, answer


def test_countdown_one_number_alone_earns_only_the_format_credit() -> None:
    task, instance, _ = _countdown()
    target = instance.data["target"]
    nearest = min((n for n in instance.data["numbers"] if n != target), key=lambda n: abs(n - target))
    lone = task.verify(instance, f"<answer>{nearest}</answer>")  # scored 0.1 + 0.4 * closeness
    assert lone.score == pytest.approx(0.1)


def test_countdown_legitimate_phrasings_pass() -> None:
    task, instance, solution = _countdown()
    latex = solution.replace("*", "\\times ")
    for answer in (
        f"<answer>{solution}</answer>",
        f"<answer>\n{solution}\n</answer>",
        f"<answer>{solution} = {instance.data['target']}</answer>",
        f"The answer is: {solution}",
        f"<answer>${latex}$</answer>",
        f"\\boxed{{{latex}}}",
        f"<answer>{solution.replace('*', '×').replace('-', '−')}</answer>",
        f"First try: {instance.data['numbers'][0]} + 1. <answer>{solution}</answer>",
    ):
        assert task.verify(instance, answer).solved, answer


# -- Trip planning ----------------------------------------------------------------------------------------------
def test_trip_plans_that_plan_nothing_earn_little() -> None:
    task = get_task("trip-planning")
    for instance in task.instances(seed=0, n=4, num_cities=5):
        stays = instance.data["stays"]
        one_day_each = json.dumps([{"city": c, "days": "1-1"} for c in stays])  # scored 0.58-0.71
        all_from_day_one = json.dumps([{"city": c, "days": f"1-{k}"} for c, k in stays.items()])  # 0.63-0.75
        assert task.verify(instance, one_day_each).score == 0.0
        assert task.verify(instance, all_from_day_one).score <= 0.4
        assert task.verify(instance, instance.reference or "").solved


# -- ARC and StegPoet -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("template", ["{k} & {o}", "{k} and/or {o}", "{k}|{o}", "({k}) + ({o})", "{o} & {k}"])
def test_arc_two_options_joined_are_no_answer(template: str) -> None:
    task = get_task("arc-easy")
    instance = task.instances(seed=0, n=1)[0]
    key = instance.data["answer"]
    other = next(label for label in instance.data["labels"] if label != key)
    verdict = task.verify(instance, "The answer is " + template.format(k=key, o=other))
    assert verdict.score == 0.0  # "A & B", "A and/or B", "A|B" were read as A


def test_stegpoet_reads_words_as_a_reader_sees_them() -> None:
    task = get_task("stegpoet")
    instance = task.instances(seed=0, n=1)[0]
    words = [instance.data["cipher"][str(x)] for x in instance.data["message"]]
    glued = " a ".join(f"ü{word}" for word in words)  # no code word visible; decoded as the message: solved
    assert task.verify(instance, glued).score == 0.0
    split = (instance.reference or "").replace(words[0], words[0][:2] + "\u200b" + words[0][2:], 1)
    assert task.verify(instance, split).solved  # a zero-width space inside reads as the word it shows
    assert task.verify(instance, (instance.reference or "").upper()).solved


@pytest.mark.parametrize(("answer", "misread"), [("1e2", 2), ("0x10", 10), ("4.37e2", 2), ("0x1b5", 5)])
def test_other_notations_are_not_their_last_digits(answer: str, misread: int) -> None:
    task = get_task("arithmetic")
    assert not task.verify(_arithmetic(misread), answer).solved  # read as their last digits, these solved
    assert not task.verify(_arithmetic(misread), f"{answer}\n").solved


@pytest.mark.parametrize(
    ("gold", "answer"),
    [
        ("234", "1\u00a0234"),  # math-verify read a no-break-space thousands group as its last group
        ("234", "The answer is 1\u202f234."),
        ("1234", "1,2345"),  # math-verify read a broken group as 1234
        ("4.37", "The answer is 4,37"),  # a decimal comma: no number, as in arithmetic
    ],
)
def test_gsm8k_misread_groups_do_not_pay(gold: str, answer: str) -> None:
    assert not get_task("gsm8k").verify(_gsm8k(gold), answer).solved


@pytest.mark.parametrize(
    ("gold", "answer"),
    [
        ("1234", "1\u00a0234"),
        ("1234567", "The answer is 1\u202f234\u202f567."),
        ("1234", "\\boxed{1,234}"),
        ("240", "The answer is $240."),
        ("240", "\\boxed{240} dollars"),
        ("12", "Adding 3,4,5 gives 12."),
        ("12", "There are 3,4 and 5 items, so \\boxed{12}"),
    ],
)
def test_gsm8k_legitimate_phrasings_pass(gold: str, answer: str) -> None:
    assert get_task("gsm8k").verify(_gsm8k(gold), answer).solved, answer


def test_arithmetic_reads_typographic_thousands_spaces() -> None:
    task = get_task("arithmetic")
    assert task.verify(_arithmetic(4370), "4\u00a0370").solved
    assert task.verify(_arithmetic(1234567), "The answer is 1\u2009234\u2009567.").solved
    assert not task.verify(_arithmetic(370), "4\u00a0370").solved  # read as its last group, this solved
    assert not task.verify(_arithmetic(3456), "12\u00a03456").solved


# -- Calendar scheduling ----------------------------------------------------------------------------------------
def test_calendar_dash_variants_read_and_hedges_still_fail() -> None:
    task = get_task("calendar-scheduling")
    instance = task.instances(seed=0, n=1)[0]
    reference = instance.reference or ""
    for dash in (" − ", " — ", "–", " until "):
        assert task.verify(instance, reference.replace(" - ", dash)).solved, dash
    start, end = reference.rsplit(", ", 1)[1].split(" - ")
    hedge = f"Here is the proposed time: {instance.data['days'][0]}, {start} − {end} or 16:00 − 17:00"
    assert task.verify(instance, hedge).score == 0.0


def test_trip_plans_that_ignore_the_flights_earn_less() -> None:
    """The cities in the prompt's order with their days chained, never looking at the flights."""
    task = get_task("trip-planning")
    scores = []
    for instance in task.instances(seed=0, n=20, num_cities=5):
        plan, day = [], 1
        for city, days in instance.data["stays"].items():
            plan.append({"city": city, "days": f"{day}-{day + days - 1}"})
            day += days - 1
        verdict = task.verify(instance, json.dumps(plan))
        if not verdict.solved:
            scores.append(verdict.score)
    assert scores and sum(scores) / len(scores) <= 0.75  # was 0.88: the flights are the problem's core


def test_a_box_inside_a_box_is_part_of_the_outer_answer() -> None:
    nested = "\\boxed{436 \\boxed{437}}"  # read by its inner box, this solved arithmetic and GSM8K
    assert not get_task("arithmetic").verify(_arithmetic(437), nested).solved
    assert not get_task("gsm8k").verify(_gsm8k("437"), nested).solved
    assert get_task("arithmetic").verify(_arithmetic(437), "\\boxed{\\boxed{437}}").solved
    assert get_task("gsm8k").verify(_gsm8k("437"), "So the total is \\boxed{437}.").solved
