"""TravelPlanner (Xie et al. 2024), sole-planning mode, on the 45-query train split bundled with testtime.

Each instance is one query with its reference information (attractions, restaurants, accommodations,
flights, self-driving and taxi options of the cities on the route). The planner answers with a day-by-day
plan in the benchmark's format, either as JSON / a Python-literal list of day objects (keys ``days``,
``current_city``, ``transportation``, ``breakfast``, ``attraction``, ``lunch``, ``dinner``,
``accommodation``) or as text blocks ``Day 1: / Current City: ... / Transportation: ...``.

The verifier re-implements the benchmark's constraints from the reference information:

commonsense: right number of days; a reasonable route (start and end at the origin, visit the required
number of destination cities, each once); every named flight, restaurant, attraction and accommodation
exists in the reference information; everything of a day happens in that day's city; complete information
(transportation on travel days, accommodation every night, at most half the meal/attraction slots
empty); diverse restaurants; diverse attractions; non-conflicting transportation (no self-driving together
with flights or taxis); accommodations' minimum nights.

hard: total cost within the budget (flights per person, meals per person, rooms by maximum occupancy,
self-driving per 5 people, taxis per 4 people); house rules, room type, cuisines and transportation
preferences when the query states them.

Score = the fraction of checks passed; solved = all passed (the benchmark's final pass rate). The bundled
files hold only the query text and the reference information, not the query's structured fields, so the
people, budget and local constraints are parsed from the query text (:func:`parse_query`); tests check that
all 45 gold plans pass under the parsed constraints. Deviations: docs/fidelity/tasks.md.
"""

from __future__ import annotations

import ast
import functools
import gzip
import json
import math
import re
from collections.abc import Mapping
from datetime import date
from importlib import resources
from typing import Any

from testtime.tasks.base import Instance, Task, Verdict, seeded_subset
from testtime.tasks.parsing import MAX_TEXT, excerpt, find_json, strip_thinking

__all__ = ["TravelPlanner", "evaluate_plan", "load_travelplanner", "parse_plan", "parse_query"]

FIELDS = (
    "days",
    "current_city",
    "transportation",
    "breakfast",
    "attraction",
    "lunch",
    "dinner",
    "accommodation",
)
CUISINES = ("Chinese", "American", "Italian", "Mexican", "Indian", "Mediterranean", "French")
_NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
                 "nine": 9, "ten": 10, "single": 1, "solo": 1, "pair": 2}  # fmt: skip


# -- data ------------------------------------------------------------------------------------------------
def _read_gz_jsonl(name: str) -> list[dict[str, Any]]:
    path = resources.files("testtime") / "data" / "travelplanner" / name
    with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


@functools.lru_cache(maxsize=1)
def load_travelplanner() -> list[dict[str, Any]]:
    """The 45 train queries: ``{"query", "reference", "gold_plan", "constraints"}`` each."""
    references = _read_gz_jsonl("train_ref_info.jsonl.gz")
    chats = _read_gz_jsonl("std_travelplanner.jsonl.gz")
    items = []
    for reference, chat in zip(references, chats, strict=True):
        user = chat["messages"][1]["content"]
        query = user[user.rindex("Query:") + len("Query:") :].strip()
        gold = [day for day in ast.literal_eval(chat["messages"][2]["content"]) if day]
        items.append(
            {
                "query": query,
                "reference": reference,
                "gold_plan": gold,
                "constraints": parse_query(query, reference),
            }
        )
    return items


def _city(name: str) -> str:
    """``"San Antonio(Texas)"`` -> ``"San Antonio"``."""
    return re.sub(r"\s*\(.*?\)\s*$", "", name.strip())


def parse_query(query: str, reference: Mapping[str, Any]) -> dict[str, Any]:
    """The structured fields of a query, from its text and its reference information.

    Returns:
        ``origin``, ``cities`` (destinations in the reference), ``dates``, ``days``, ``people``, ``budget``,
        ``house_rules`` (subset of parties / smoking / children under 10 / pets / visitors), ``room_type``
        (None, "entire", "private", "shared" or "not shared"), ``cuisines`` and ``no_flight`` /
        ``no_self_driving``.
    """
    flights = [re.match(r"Flight from (.+) to (.+) on (\d{4}-\d{2}-\d{2})", key) for key in reference]
    legs = [m.groups() for m in flights if m]
    dates = [d for _, _, d in legs]
    first, last = date.fromisoformat(min(dates)), date.fromisoformat(max(dates))
    text = query.lower()
    people = 1
    for m in re.finditer(
        r"(?:group|party) of (\w+)|(\w+) (?:people|persons?)\b|for (two|a pair)\b|\b(pair)\b", text
    ):
        word = next(g for g in m.groups() if g)
        word = "pair" if word == "a pair" else word
        value = int(word) if word.isdigit() else _NUMBER_WORDS.get(word)
        if value:
            people = value
            break
    budget_match = re.search(r"\$([\d,]+)", query)
    rules = set()
    if "part" in text and re.search(r"\bpart(y|ies)\b", text) and "party of" not in text:
        rules.add("parties")
    if "smok" in text:
        rules.add("smoking")
    if "children" in text or "kids" in text:
        rules.add("children under 10")
    if re.search(r"\bpets?\b|pet-friendly", text):
        rules.add("pets")
    if "visitor" in text:
        rules.add("visitors")
    room_type = None
    if re.search(r"not? (?:be )?shared|non-shared", text):
        room_type = "not shared"
    elif "entire room" in text or "entire home" in text:
        room_type = "entire"
    elif "private room" in text:
        room_type = "private"
    elif "shared room" in text:
        room_type = "shared"
    no_flight = bool(re.search(r"(?:not|n't|avoid|no)\b[^.]*\b(?:fly|flying|flights?)\b", text))
    no_self_driving = bool(
        re.search(r"non-self-driving|(?:not|n't|no)\b[^.]*\b(?:self-driv\w*|drive ourselves|drive)\b", text)
    )
    return {
        "origin": legs[0][0],
        "cities": [key[len("Attractions in ") :] for key in reference if key.startswith("Attractions in ")],
        "dates": sorted(set(dates)),
        "days": (last - first).days + 1,
        "people": people,
        "budget": int(budget_match.group(1).replace(",", "")) if budget_match else None,
        "house_rules": sorted(rules),
        "room_type": room_type,
        "cuisines": [c for c in CUISINES if c.lower() in text],
        "no_flight": no_flight,
        "no_self_driving": no_self_driving,
    }


# -- parsing a plan --------------------------------------------------------------------------------------
class _Repeated(Exception):
    """A day names one field twice (two values for one slot: the parser would keep one silently)."""


def _field(key: Any) -> str:
    key = str(key).strip().lower().replace(" ", "_")
    return {"day": "days", "attractions": "attraction"}.get(key, key)


def _normalise_day(item: Mapping[str, Any]) -> dict[str, str]:
    day: dict[str, str] = {}
    for key, value in item.items():
        key = _field(key)
        if key in FIELDS:
            if key in day:  # "attraction" and "attractions", "current city" and "current_city"
                raise _Repeated(key)
            day[key] = str(value).strip() if value is not None else "-"
    return day


def _literal(text: str) -> Any:
    """A Python literal (``ast.literal_eval``: no code runs), refusing a dict that repeats a key."""
    try:
        tree = ast.parse(text, mode="eval")
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                keys = [repr(k.value) for k in node.keys if isinstance(k, ast.Constant)]
                if len(set(keys)) != len(keys):
                    raise _Repeated("a key")
        return ast.literal_eval(tree)
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
        return None


def _parse(answer: str) -> tuple[list[dict[str, str]] | None, str | None]:
    """``(plan or None, why there is none)``; a day naming a field twice is no plan (a hedge)."""
    try:
        return _parse_days(answer), None
    except _Repeated as exc:
        return None, f"A day names the field {excerpt(str(exc), 40)!r} twice; give one value per field."


def parse_plan(answer: str) -> list[dict[str, str]] | None:
    """A plan as a list of day dicts with the benchmark's keys, or None if none is found or a day names one
    field twice (in JSON, a Python literal or a text block: two values for one slot)."""
    try:
        return _parse_days(answer)
    except _Repeated:
        return None


def _parse_days(answer: str) -> list[dict[str, str]] | None:
    """:func:`parse_plan`, raising :class:`_Repeated` for a field named twice."""
    text = strip_thinking(answer if isinstance(answer, str) else "")
    value, repeated = find_json(text, want=list)
    if repeated:
        raise _Repeated("a key")
    if value is None:
        start, end = text.find("["), text.rfind("]")
        if 0 <= start < end and end - start < MAX_TEXT:
            value = _literal(text[start : end + 1])
    if isinstance(value, list):
        days = [_normalise_day(item) for item in value[:30] if isinstance(item, Mapping) and item]
        days = [d for d in days if d]
        if days:
            return days
    # Text blocks: "Day 1:" followed by "Key: value" lines.
    blocks = re.split(r"(?im)^\s*\**\s*day\s*(\d+)\s*\**\s*:?\s*\**\s*$", text)
    days = []
    for number, body in zip(blocks[1::2], blocks[2::2], strict=False):
        day = {"days": number}
        for line in body.splitlines():
            m = re.match(r"\s*[-*]*\s*\**([A-Za-z ]+?)\**\s*:\s*(.*)$", line)
            if m:
                key = _field(m.group(1))
                if key in FIELDS:
                    if key in day:
                        raise _Repeated(key)
                    day[key] = m.group(2).strip()
        days.append(day)
    return days[:30] or None


# -- checking a plan -------------------------------------------------------------------------------------
def _entries(value: str) -> list[tuple[str, str]]:
    """``"A, City;B, City;"`` -> ``[("A", "City"), ("B", "City")]``; ``"-"`` -> ``[]``."""
    out = []
    for part in (value or "").split(";"):
        part = part.strip()
        if not part or part == "-":
            continue
        name, _, city = part.rpartition(",")
        out.append((name.strip(), _city(city)) if name else (part, ""))
    return out


def _day_cities(current: str) -> list[str]:
    m = re.match(r"\s*from (.+?) to (.+?)\s*$", current or "", re.I)
    return [_city(m.group(1)), _city(m.group(2))] if m else [_city(current or "")]


def evaluate_plan(
    plan: list[dict[str, str]], reference: Mapping[str, Any], c: Mapping[str, Any]
) -> list[tuple[str, bool, str]]:
    """Check a plan against the constraints; returns ``(constraint, passed, message)`` per constraint."""
    people = c["people"]
    restaurants = {}
    attractions = {}
    hotels = {}
    for key, rows in reference.items():
        if not isinstance(rows, list):
            continue
        if key.startswith("Restaurants in "):
            restaurants.update({(r["Name"].strip(), _city(key[15:])): r for r in rows})
        elif key.startswith("Attractions in "):
            attractions.update({(r["Name"].strip(), _city(key[15:])): r for r in rows})
        elif key.startswith("Accommodations in "):
            hotels.update({(r["NAME"].strip(), _city(key[18:])): r for r in rows})
    flights = {
        r["Flight Number"]: r
        for key, rows in reference.items()
        if key.startswith("Flight") and isinstance(rows, list)
        for r in rows
    }
    ground = {}
    for key, value in reference.items():
        m = re.match(r"(Self-driving|Taxi) from (.+) to (.+)$", key)
        if m and isinstance(value, str):
            cost = re.search(r"cost:\s*([\d,]+)", value)
            ground[(m.group(1).lower(), m.group(2), m.group(3))] = (
                int(cost.group(1).replace(",", "")) if cost else None
            )

    results: list[tuple[str, bool, str]] = []

    def check(name: str, problems: list[str]) -> None:
        results.append((name, not problems, "; ".join(problems[:6])))

    origin, cities = c["origin"], set(c["cities"])
    # days
    check(
        "valid days",
        [] if len(plan) == c["days"] else [f"the plan has {len(plan)} days, the trip {c['days']}"],
    )
    # route
    route_problems = []
    route: list[str] = []
    for day in plan:
        for city in _day_cities(day.get("current_city", "")):
            if city and (not route or route[-1] != city):
                route.append(city)
    if not route or route[0] != origin:
        route_problems.append(f"the trip must start in {origin}")
    if not route or route[-1] != origin:
        route_problems.append(f"the trip must end back in {origin}")
    visited = [city for city in route[1:-1]]
    if len(set(visited)) != len(visited):
        route_problems.append("a destination city is visited twice")
    if len(set(visited)) != len(cities):
        route_problems.append(f"visit {len(cities)} destination city(ies), not {len(set(visited))}")
    outside = sorted(set(visited) - cities)
    if outside:
        route_problems.append(f"no information about {excerpt(', '.join(outside), 200)}")
    check("reasonable city route", route_problems)
    # sandbox, current city, complete information
    sandbox, elsewhere, absent = [], [], []
    used_restaurants, used_attractions, modes = [], [], set()
    cost = 0.0
    nights: list[str] = []
    for index, day in enumerate(plan, 1):
        here = [x for x in _day_cities(day.get("current_city", "")) if x]
        travel_day = len(here) == 2
        transport = day.get("transportation", "-") or "-"
        absent += _absent_in_day(day, index, last=index == c["days"])
        if transport.strip() not in ("", "-"):
            ways = len(re.findall(r"Flight Number", transport, re.I))
            ways += len(re.findall(r"self-driving|\btaxi\b", transport, re.I))
            if ways > 1:  # only one would be charged and checked: a hedge
                sandbox.append(f"day {index}'s transportation names {ways} ways to travel; choose one")
                modes.update(m.lower() for m in re.findall(r"self-driving|\btaxi\b", transport, re.I))
                if re.search(r"Flight Number", transport, re.I):
                    modes.add("flight")
            flight = re.search(r"Flight Number:\s*(\w+)", transport, re.I)
            mode = re.match(r"\s*(self-driving|taxi)", transport, re.I)
            if flight:
                modes.add("flight")
                row = flights.get(flight.group(1))
                if row is None:
                    sandbox.append(f"flight {excerpt(flight.group(1))} does not exist")
                elif travel_day and (row["OriginCityName"], row["DestCityName"]) != (here[0], here[1]):
                    sandbox.append(
                        f"flight {excerpt(flight.group(1))} does not go from {excerpt(here[0])} to {excerpt(here[1])}"
                    )
                else:
                    cost += row["Price"] * people
            elif mode:
                kind = mode.group(1).lower()
                modes.add(kind)
                leg = re.search(r"from (.+?) to (.+?)(?:,|$)", transport)
                key = (kind, _city(leg.group(1)), _city(leg.group(2))) if leg else None
                if key not in ground or ground[key] is None:
                    sandbox.append(f"no {kind} information for day {index}")
                else:
                    per = 5 if kind == "self-driving" else 4
                    cost += ground[key] * math.ceil(people / per)
            else:
                sandbox.append(f"cannot read day {index}'s transportation")
        for meal in ("breakfast", "lunch", "dinner"):
            entries = _entries(day.get(meal, "-"))
            if len(entries) > 1:
                sandbox.append(f"day {index} {meal} names {len(entries)} restaurants; choose one")
            for name, city in entries:
                row = restaurants.get((name, city))
                if row is None:
                    sandbox.append(
                        f"restaurant {excerpt(name)!r} in {excerpt(city) or '?'} is not in the information"
                    )
                    continue
                used_restaurants.append(f"{name}, {city}")
                cost += row["Average Cost"] * people
                if city not in here:
                    elsewhere.append(
                        f"day {index} {meal} is in {excerpt(city)}, not in {excerpt(' or '.join(here))}"
                    )
        entries = _entries(day.get("attraction", "-"))
        for name, city in entries:
            if (name, city) not in attractions:
                sandbox.append(
                    f"attraction {excerpt(name)!r} in {excerpt(city) or '?'} is not in the information"
                )
                continue
            used_attractions.append(f"{name}, {city}")
            if city not in here:
                elsewhere.append(
                    f"day {index} attraction {excerpt(name)!r} is in {excerpt(city)}, not in {excerpt(' or '.join(here))}"
                )
        stays = _entries(day.get("accommodation", "-"))
        if len(stays) > 1:
            sandbox.append(f"day {index} names {len(stays)} accommodations; choose one")
        for name, city in stays[:1]:
            row = hotels.get((name, city))
            if row is None:
                sandbox.append(
                    f"accommodation {excerpt(name)!r} in {excerpt(city) or '?'} is not in the information"
                )
                nights.append("?")
                continue
            nights.append(name)
            cost += row["price"] * math.ceil(people / max(int(row["maximum occupancy"]), 1))
            if city != here[-1]:
                elsewhere.append(
                    f"day {index} accommodation is in {excerpt(city)}, not in {excerpt(here[-1])}"
                )
        if not stays:
            nights.append("-")
    filled = sum(1 for day in plan[: c["days"]] for value in day.values() if value and value.strip() != "-")
    if filled < 0.5 * 6 * c["days"]:
        absent.append(f"only {filled} of the {6 * c['days']} pieces of information the trip needs are given")
    if len(plan) != c["days"] or route_problems:
        absent.insert(0, "the plan needs the right days and city route first")
    check("complete information", absent)
    complete = not absent
    # Checks that would pass vacuously on an empty plan count only for a complete one (our choice).
    vacuous = "not checked: the plan is incomplete"
    check("within sandbox", sandbox if complete else sandbox or [vacuous])
    check("within current city", elsewhere if complete else elsewhere or [vacuous])
    repeats = sorted({r for r in used_restaurants if used_restaurants.count(r) > 1})
    check(
        "diverse restaurants",
        [f"restaurant {excerpt(r)!r} is visited more than once" for r in repeats]
        or ([] if complete else [vacuous]),
    )
    repeats = sorted({a for a in used_attractions if used_attractions.count(a) > 1})
    check(
        "diverse attractions",
        [f"attraction {excerpt(a)!r} is visited more than once" for a in repeats]
        or ([] if complete else [vacuous]),
    )
    conflict = "self-driving" in modes and ("flight" in modes or "taxi" in modes)
    check(
        "non-conflicting transportation",
        ["self-driving cannot be combined with flights or taxis"]
        if conflict
        else ([] if complete else [vacuous]),
    )
    short = []
    run_name, run = None, 0
    for name in [*nights, None]:
        if name == run_name:
            run += 1
            continue
        if run_name not in (None, "-", "?"):
            needed = int(next(r["minimum nights"] for (n, _), r in hotels.items() if n == run_name))  # noqa: B023
            if run < needed:
                short.append(f"{run_name!r} requires at least {needed} nights, the plan stays {run}")
        run_name, run = name, 1
    check("minimum nights", short or ([] if complete else [vacuous]))
    # hard constraints: the official evaluation checks them only for a complete plan within the sandbox and
    # counts them as failed otherwise
    gated = not complete or bool(sandbox)
    commonsense = len(results)
    if c["budget"] is not None:
        over = cost > c["budget"]
        check("budget", [f"the plan costs ${cost:,.0f}, over the budget of ${c['budget']:,}"] if over else [])
    chosen = [
        hotels[(n, ci)]
        for d in plan
        for n, ci in _entries(d.get("accommodation", "-"))[:1]
        if (n, ci) in hotels
    ]
    if c["house_rules"]:
        bad = [
            f"{h['NAME']!r} says '{h['house_rules']}'"
            for h in chosen
            for rule in c["house_rules"]
            if f"no {rule}" in h["house_rules"].lower()
        ]
        check("house rules", sorted(set(bad)))
    if c["room_type"]:
        want = {"entire": "Entire home/apt", "private": "Private room", "shared": "Shared room"}
        if c["room_type"] == "not shared":
            bad = [h["NAME"] for h in chosen if h["room type"] == "Shared room"]
        else:
            bad = [h["NAME"] for h in chosen if h["room type"] != want[c["room_type"]]]
        check("room type", [f"{n!r} is not a {c['room_type']} room" for n in sorted(set(bad))])
    if c["cuisines"]:
        served = set()
        for d in plan:
            for meal in ("breakfast", "lunch", "dinner"):
                for name, city in _entries(d.get(meal, "-")):
                    row = restaurants.get((name, city))
                    if row:
                        served |= {x.strip() for x in row["Cuisines"].split(",")}
        missing = [x for x in c["cuisines"] if x not in served]
        check("cuisine", [f"no restaurant serving {', '.join(missing)}"] if missing else [])
    if c["no_flight"] or c["no_self_driving"]:
        bad = []
        if c["no_flight"] and "flight" in modes:
            bad.append("the query asks for no flights")
        if c["no_self_driving"] and "self-driving" in modes:
            bad.append("the query asks for no self-driving")
        check("transportation", bad)
    if gated:
        reason = "not checked: the plan is incomplete or names things not in the information"
        results[commonsense:] = [
            (name, False, message or reason) for name, _, message in results[commonsense:]
        ]
    return results


def _absent_in_day(day: Mapping[str, str], index: int, *, last: bool) -> list[str]:
    """The official "complete information" rules for one day: every field present; transportation on a
    travel day; an attraction and three meals on a day spent in one city; accommodation every night but the
    last."""

    def empty(key: str) -> bool:
        return (day.get(key) or "-").strip() in ("", "-")

    missing = [key for key in FIELDS if key not in ("days", "current_city") and key not in day]
    if missing:
        return [f"day {index} lacks {', '.join(missing)}"]
    travel_day = bool(re.match(r"\s*from .+ to .+", day.get("current_city", ""), re.I))
    problems = []
    if travel_day and empty("transportation"):
        problems.append(f"day {index} travels but has no transportation")
    if not travel_day and empty("attraction"):
        problems.append(f"day {index} has no attraction")
    if not travel_day and any(empty(meal) for meal in ("breakfast", "lunch", "dinner")):
        problems.append(f"day {index} lacks a meal")
    if not last and empty("accommodation"):
        problems.append(f"day {index} has no accommodation")
    return problems


class TravelPlanner(Task):
    """TravelPlanner sole-planning on the 45 bundled train queries."""

    name = "travelplanner"
    description = "TravelPlanner sole-planning, 45 train queries with reference information"
    splits = ("train",)

    def _instances(
        self, *, split: str, seed: int, n: int | None, difficulty: Mapping[str, int]
    ) -> list[Instance]:
        items = load_travelplanner()
        out = []
        for i in seeded_subset(len(items), seed, n):
            item = items[i]
            data = {
                "query": item["query"],
                "reference": item["reference"],
                "constraints": item["constraints"],
            }
            out.append(
                Instance(task=self.name, id=f"train-{i}", data=data, reference=json.dumps(item["gold_plan"]))
            )
        return out

    def prompt(self, instance: Instance) -> str:
        data = instance.data
        info = []
        for key, value in data["reference"].items():
            info.append(f"## {key}")
            if isinstance(value, list):
                info += [json.dumps(row, ensure_ascii=False) for row in value]
            else:
                info.append(str(value))
        example = {"days": 1, "current_city": "from A to B", "transportation": "Flight Number: F0123456, from A to B",
                   "breakfast": "-", "attraction": "Some Museum, B;", "lunch": "Some Cafe, B",
                   "dinner": "Some Grill, B", "accommodation": "Some Hotel, B"}  # fmt: skip
        return (
            "You are a proficient planner. Based on the information and the query below, give a detailed plan "
            "with flight numbers, restaurant names and accommodation names taken from the information. Write "
            "'-' where nothing is needed (e.g. after returning home). On a day that moves between two cities, "
            "write current_city as 'from A to B'. Answer with a JSON list of day objects like "
            f"{json.dumps(example)}.\n\n# Information\n" + "\n".join(info) + f"\n\n# Query\n{data['query']}"
        )

    def verify(self, instance: Instance, answer: str) -> Verdict:
        plan, problem = _parse(answer)
        if not plan:
            return Verdict(
                score=0.0,
                solved=False,
                feedback=problem or "No plan found: answer with a JSON list of day objects.",
            )
        results = evaluate_plan(plan, instance.data["reference"], instance.data["constraints"])
        failed = [(name, message) for name, ok, message in results if not ok]
        solved = not failed
        score = 1.0 if solved else min(0.999, (len(results) - len(failed)) / len(results))
        feedback = (
            "The plan satisfies every constraint."
            if solved
            else "\n".join(f"Violated {name}: {message}." for name, message in failed)
        )
        return Verdict(
            score=score,
            solved=solved,
            feedback=feedback,
            details={"failed": [name for name, _ in failed], "checks": len(results)},
        )
