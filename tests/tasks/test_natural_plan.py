"""Natural-Plan-style tasks: the exact solvers agree with brute force through the verifiers, and wrong
plans get feedback naming the violated constraint."""

from __future__ import annotations

import itertools
import json

import pytest

from testtime.tasks import get_task
from testtime.tasks.natural_plan import DAYS, _hhmm, format_clock


# -- meeting planning -------------------------------------------------------------------------------------
def _best_by_brute_force(data: dict) -> int:
    """The most meetings over all orders of all subsets, simulated step by step (independent of the solver)."""
    best = 0
    friends = data["friends"]
    for size in range(len(friends), 0, -1):
        for subset in itertools.permutations(friends, size):
            where, now, ok = data["start_location"], data["start_time"], True
            for f in subset:
                now += data["travel"][where][f["location"]]
                where = f["location"]
                now = max(now, f["start"]) + f["duration"]
                if now > f["end"]:
                    ok = False
                    break
            if ok:
                return size
    return best


@pytest.mark.parametrize("people", [1, 3, 5])
def test_meeting_solver_is_optimal_and_its_plan_verifies(people: int) -> None:
    task = get_task("meeting-planning")
    for instance in task.instances(seed=4, n=6, num_people=people):
        assert instance.data["optimum"] == _best_by_brute_force(instance.data)
        verdict = task.verify(instance, instance.reference)
        assert verdict.solved and verdict.score == 1.0, verdict.feedback
        assert verdict.details["meetings"] == instance.data["optimum"]


def test_meeting_feedback_names_each_violated_constraint() -> None:
    task = get_task("meeting-planning")
    instance = task.instances(seed=0)[0]
    data = instance.data
    friend = data["friends"][0]
    late = friend["end"] - friend["duration"] + 30  # meeting would end 30 minutes after they leave
    travel = data["travel"][data["start_location"]][friend["location"]]
    plan = (
        f"SOLUTION: You start at {data['start_location']} at 9:00AM. "
        f"You travel to {friend['location']} in {travel + 1} minutes and arrive at {format_clock(540 + travel)}. "
        f"You wait until {format_clock(late)}. "
        f"You meet {friend['name']} for {friend['duration']} minutes from {format_clock(late)} to "
        f"{format_clock(late + friend['duration'])}. You meet Zorro for 30 minutes."
    )
    verdict = task.verify(instance, plan)
    assert not verdict.solved and verdict.details["meetings"] == 0
    assert f"takes {travel} minutes, not {travel + 1}" in verdict.feedback
    assert f"only available until {format_clock(friend['end'])}" in verdict.feedback
    assert "no friend called 'Zorro'" in verdict.feedback
    short = plan.replace(f"for {friend['duration']} minutes", "for 5 minutes")
    assert "must last at least" in task.verify(instance, short).feedback  # durations are >= 15
    # a valid but sub-optimal plan: only the first meeting of the reference
    first_meeting = (
        instance.reference.split("You meet ")[0] + "You meet " + instance.reference.split("You meet ")[1]
    )
    partial = task.verify(instance, first_meeting)
    assert (
        not partial.solved
        and partial.details["meetings"] == 1
        and "A better schedule exists" in partial.feedback
    )
    assert partial.score == pytest.approx(1 / data["optimum"])


# -- trip planning ----------------------------------------------------------------------------------------
def _plan(order: list[str], stays: dict[str, int]) -> str:
    start, rows = 1, []
    for city in order:
        rows.append({"city": city, "days": f"{start}-{start + stays[city] - 1}"})
        start += stays[city] - 1
    return json.dumps(rows)


@pytest.mark.parametrize("cities", [2, 4, 5])
def test_trip_solver_counts_match_verifying_every_permutation(cities: int) -> None:
    task = get_task("trip-planning")
    for instance in task.instances(seed=9, n=5, num_cities=cities):
        stays = instance.data["stays"]
        verified = sum(
            task.verify(instance, _plan(list(order), stays)).solved for order in itertools.permutations(stays)
        )
        assert verified == instance.data["num_solutions"] >= 1
        assert task.verify(instance, f"Here is my plan:\n```json\n{instance.reference}\n```").solved


def test_trip_feedback_is_specific() -> None:
    task = get_task("trip-planning")
    instance = task.instances(seed=0)[0]
    plan = json.loads(instance.reference)
    plan[0]["days"] = "1-9"
    verdict = task.verify(instance, json.dumps(plan))
    assert not verdict.solved and "days in" in verdict.feedback and "flight day" in verdict.feedback
    missing = task.verify(instance, json.dumps(plan[:-1]))
    assert f"{plan[-1]['city']} is missing" in missing.feedback
    fake = task.verify(instance, json.dumps([{"city": "Atlantis", "days": "1-3"}]))
    assert "Atlantis" in fake.feedback and fake.score == 0.0  # no city of the problem planned
    instance, no_flight = next(
        (inst, (a, b))
        for inst in task.instances(seed=0, n=20)
        for a, b in itertools.combinations(inst.data["stays"], 2)
        if sorted([a, b]) not in inst.data["flights"]
    )
    verdict = task.verify(instance, _plan([*no_flight], instance.data["stays"]))
    assert f"no direct flight between {no_flight[0]} and {no_flight[1]}" in verdict.feedback


# -- calendar scheduling ----------------------------------------------------------------------------------
def _earliest_by_minutes(data: dict) -> tuple[str, int] | None:
    """The earliest free slot on the 30-minute grid from a minute-by-minute occupancy map built from the raw
    busy and preference blocks (independent of the module's conflict helper)."""
    for day in data["days"]:
        taken = [False] * (24 * 60)
        for person in data["people"]:
            for block in person["busy"] + person["avoid"]:
                if block["day"] == day:
                    for minute in range(block["start"], block["end"]):
                        taken[minute] = True
        for start in range(data["work_start"], data["work_end"] - data["duration"] + 1, 30):
            if not any(taken[start : start + data["duration"]]):
                return day, start
    return None


@pytest.mark.parametrize("knobs", [{}, {"num_people": 5, "num_days": 3}, {"num_people": 1}])
def test_calendar_reference_is_the_earliest_valid_slot(knobs: dict[str, int]) -> None:
    task = get_task("calendar-scheduling")
    for instance in task.instances(seed=5, n=8, **knobs):
        data = instance.data
        day, start = _earliest_by_minutes(data)
        assert (data["earliest"]["day"], data["earliest"]["start"]) == (day, start)
        assert instance.reference.endswith(f"{day}, {_hhmm(start)} - {_hhmm(start + data['duration'])}")
        assert task.verify(instance, instance.reference).solved
        valid = []
        for day in data["days"]:
            for start in range(data["work_start"], data["work_end"] - data["duration"] + 1, 30):
                answer = f"{day}, {_hhmm(start)} - {_hhmm(start + data['duration'])}"
                verdict = task.verify(instance, answer)
                if verdict.score >= 0.5:
                    valid.append((DAYS.index(day), start, verdict.solved))
        assert valid and valid[0][2] and not any(solved for *_, solved in valid[1:])


def test_calendar_feedback_names_conflicts() -> None:
    task = get_task("calendar-scheduling")
    instance = task.instances(seed=0)[0]
    person = next(p for p in instance.data["people"] if p["busy"])
    block = person["busy"][0]
    answer = f"Here is the proposed time: {block['day']}, {_hhmm(block['start'])} - {_hhmm(block['start'] + instance.data['duration'])}"
    verdict = task.verify(instance, answer)
    assert not verdict.solved and f"{person['name']} is busy on {block['day']}" in verdict.feedback
    assert "must last" in task.verify(instance, "Monday, 09:00 - 09:10").feedback
    sunday = task.verify(instance, "Sunday, 09:00 - 10:00")  # not one of the five weekdays the parser reads
    assert sunday.score == 0.0 and sunday.feedback.startswith("No slot found")


def test_meeting_plans_must_state_true_times() -> None:
    task = get_task("meeting-planning")
    instance = next(
        i
        for i in task.instances(seed=1, n=30, num_people=1)
        if i.data["optimum"] == 1 and "You wait until" in i.reference
    )
    data, reference = instance.data, instance.reference
    friend = data["friends"][0]
    travel = data["travel"][data["start_location"]][friend["location"]]
    arrive, begin, end = 540 + travel, friend["start"], friend["start"] + friend["duration"]
    assert task.verify(instance, reference).solved
    wrong_arrival = reference.replace(
        f"arrive at {format_clock(arrive)}", f"arrive at {format_clock(arrive + 5)}"
    )
    verdict = task.verify(instance, wrong_arrival)
    assert not verdict.solved and f"not {format_clock(arrive + 5)}" in verdict.feedback
    # meeting before the friend is there (and, without the wait, before you arrive when that is later)
    early = reference.replace(f"You wait until {format_clock(begin)}. ", "").replace(
        f"from {format_clock(begin)} to {format_clock(end)}",
        f"from {format_clock(begin - 15)} to {format_clock(end - 15)}",
    )
    verdict = task.verify(instance, early)
    assert not verdict.solved and verdict.details["meetings"] == 0
    assert f"only available from {format_clock(begin)}" in verdict.feedback
    during_travel = reference.replace(
        f"from {format_clock(begin)} to {format_clock(end)}",
        f"from {format_clock(arrive - 5)} to {format_clock(arrive - 5 + friend['duration'])}",
    )
    verdict = task.verify(instance, during_travel)
    assert not verdict.solved and "you are only free" in verdict.feedback
    wrong_end = reference.replace(f"to {format_clock(end)}", f"to {format_clock(end + 15)}")
    assert "is not" in task.verify(instance, wrong_end).feedback
    wrong_start = reference.replace("You start at", "You start at Nowhere at 9:00AM. Then at")
    assert not task.verify(instance, wrong_start).solved


def test_stubs_earn_little() -> None:
    trip = get_task("trip-planning")
    for cities in (2, 4):
        for instance in trip.instances(seed=2, n=5, num_cities=cities):
            first = json.loads(instance.reference)[0]
            stub = trip.verify(instance, json.dumps([first]))
            assert stub.score <= 0.7 / cities, (cities, stub.score)  # was 0.5 at any size
            assert trip.verify(instance, '[{"city": "", "days": ""}]').score == 0.0
    calendar = get_task("calendar-scheduling")
    instance = calendar.instances(seed=0)[0]
    data = instance.data
    slots = [
        f"{day}, {_hhmm(s)} - {_hhmm(s + data['duration'])}"
        for day in data["days"]
        for s in range(data["work_start"], data["work_end"] - data["duration"] + 1, 30)
    ]
    hedge = calendar.verify(instance, "Here is the proposed time: " + " or ".join(slots))
    assert hedge.score == 0.0 and "exactly one" in hedge.feedback
    assert calendar.verify(instance, "Here is the proposed time: DAY, HH:MM - HH:MM").score == 0.0
