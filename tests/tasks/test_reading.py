"""Reading: generation is deterministic and answerable, the splits are disjoint, the verifier pays only for
one right value (several candidates, hedges, echoes and negations score 0), in several phrasings."""

from __future__ import annotations

import pytest

from testtime.errors import UserError
from testtime.tasks import get_task
from testtime.tasks.base import content_hash
from testtime.tasks.reading import ATTRIBUTES, NAMES, Reading, named_values


def _instances(n: int = 40, **knobs: int):
    return get_task("reading").instances(seed=5, n=n, **knobs)


def _one(kind: str, **knobs: int):
    return next(i for i in _instances(**knobs) if i.data["kind"] == kind)


def test_registered_and_deterministic() -> None:
    task = get_task("reading")
    assert isinstance(task, Reading) and task.description
    first = task.instances(seed=3, n=6)
    assert [i.to_dict() for i in first] == [i.to_dict() for i in task.instances(seed=3, n=6)]
    assert [i.to_dict() for i in first[:2]] == [i.to_dict() for i in task.instances(seed=3, n=2)]
    assert first != task.instances(seed=4, n=6)


@pytest.mark.parametrize("knobs", [{}, {"people": 2, "facts": 1}, {"people": 8, "facts": 5}])
def test_every_instance_is_answerable_from_its_text(knobs: dict[str, int]) -> None:
    task = get_task("reading")
    for instance in _instances(30, **knobs):
        data = instance.data
        sentences = data["text"].split(". ")
        assert len(sentences) == knobs.get("people", 4)
        gold = data["answer"]
        if data["kind"] == "person":
            assert gold in NAMES
            value = next(v for v in ATTRIBUTES[data["attribute"]][3] if v in data["question"])
            assert [s.split()[0] for s in sentences if f" {value}" in s] == [gold]  # unique answer
        else:
            assert gold in ATTRIBUTES[data["attribute"]][3]
            person = next(n for n in NAMES if n in data["question"])
            own = next(s for s in sentences if s.startswith(person + " "))
            assert gold in own
        assert task.verify(instance, instance.reference).solved


def test_knob_limits_are_user_errors() -> None:
    task = get_task("reading")
    with pytest.raises(UserError, match="people is at most 8"):
        task.instances(n=1, people=9)
    with pytest.raises(UserError, match="facts is at most 5"):
        task.instances(n=1, facts=6)
    with pytest.raises(UserError, match="people must be >= 1"):
        task.instances(n=1, people=0)


def test_splits_are_disjoint_by_content() -> None:
    task = get_task("reading")
    for knobs in ({}, {"people": 2, "facts": 1}):
        train = [i for s in range(3) for i in task.instances("train", seed=s, n=40, **knobs)]
        test = [i for s in range(3) for i in task.instances("test", seed=s, n=40, **knobs)]
        assert not {content_hash(i.data) for i in train} & {content_hash(i.data) for i in test}
        assert not {(i.data["text"], i.data["question"]) for i in train} & {
            (i.data["text"], i.data["question"]) for i in test
        }
        assert all(i.id.startswith("train-seed") for i in train)


def test_correct_answers_in_several_phrasings() -> None:
    task = get_task("reading")
    attribute = _one("attribute")
    gold, person = attribute.data["answer"], next(n for n in NAMES if n in attribute.data["question"])
    for text in [
        gold,
        f"{gold}.",
        gold.upper(),
        f"{person} {ATTRIBUTES[attribute.data['attribute']][0].format(value=gold)}.",
        f"The answer is {gold}.",
        f"Answer: {gold}",
        f"Let me look at the text.\nThe text says so: {gold}.",
        f"<think>maybe something else</think>It is {gold}.",
    ]:
        assert task.verify(attribute, text).solved, text
    who = _one("person")
    gold = who.data["answer"]
    for text in [gold, f"{gold}.", f"It is {gold}.", f"{gold}'s the one.", f"The answer is {gold.lower()}"]:
        assert task.verify(who, text).solved, text


def test_several_candidates_hedges_echoes_and_negations_score_zero() -> None:
    for graded in (False, True):
        task = Reading(graded=graded)
        for instance in (_one("attribute"), _one("person")):
            data = instance.data
            gold = data["answer"]
            pool = NAMES if data["kind"] == "person" else ATTRIBUTES[data["attribute"]][3]
            other = next(v for v in pool if v != gold)
            outside = next(v for v in pool if v != gold and v not in data["text"])
            hostile = {
                "list": f"{other}, {gold}",
                "list, gold first": f"The answer is {gold}, {other}",
                "hedge": f"{gold} or {other}",
                "hedge, outside the text": f"Probably {gold} or maybe {outside}.",
                "every value": " ".join(pool),
                "echoed text": data["text"],
                "echoed question": data["question"],
                "echoed prompt": task.prompt(instance),
                "negation": f"It is not {gold}.",
                "negation, contracted": f"{gold} isn't right.",
                "never": f"Never {gold}.",
                "nothing": "",
                "marker only": "The answer is",
                "thinking only": f"<think>{gold}</think>",
                "gold, then another as the final answer": f"{gold}?\nThe answer is {other}, {gold}.",
            }
            for label, text in hostile.items():
                verdict = task.verify(instance, text)
                assert not verdict.solved and verdict.score == 0.0, (graded, data["kind"], label)


def test_wrong_single_values_and_the_graded_option() -> None:
    instance = _one("attribute")
    data = instance.data
    pool = ATTRIBUTES[data["attribute"]][3]
    in_text = next(v for v in pool if v != data["answer"] and v in data["text"])
    outside = next(v for v in pool if v not in data["text"])
    plain, graded = Reading(), Reading(graded=True)
    for text, partial in [(in_text, 0.25), (outside, 0.1)]:
        verdict = plain.verify(instance, f"The answer is {text}.")
        assert verdict.score == 0.0 and not verdict.solved and text in verdict.feedback
        assert graded.verify(instance, f"The answer is {text}.").score == partial
    assert graded.verify(instance, instance.reference).score == 1.0
    assert "names no" in plain.verify(instance, "I do not know.").feedback


def test_named_values_reads_whole_words_and_plurals() -> None:
    pets = ATTRIBUTES["pet"][3]
    assert named_values("Two cats and a dog", pets) == ["cat", "dog"]
    assert named_values("a catalogue of dogma", pets) == []
    assert named_values("Anna's", NAMES) == ["Anna"]
    assert named_values("x" * 100_000, NAMES) == []
