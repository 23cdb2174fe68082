"""StegPoet: decoding, the Appendix-F score by hand, feedback."""

from __future__ import annotations

import pytest

from testtime.tasks import get_task
from testtime.tasks.stegpoet import decode, levenshtein


def test_levenshtein_known_values() -> None:
    assert levenshtein(list("kitten"), list("sitting")) == 3
    assert levenshtein([], [1, 2]) == 2
    assert levenshtein([1, 2, 3], [1, 2, 3]) == 0
    assert levenshtein([1, 2, 3], [3, 2, 1]) == 2


def test_decode_reads_whole_words_case_insensitively() -> None:
    cipher = {"0": "otter", "1": "ember"}
    numbers, positions = decode("An Otter swam; embers glowed, the ember, OTTER!", cipher)
    assert numbers == [0, 1, 0] and positions == [1, 6, 7]


def test_reference_solves_and_score_matches_hand_computation() -> None:
    task = get_task("stegpoet")
    instance = task.instances(seed=0, length=4, vocab=3, min_gap=0)[0]
    assert task.verify(instance, instance.reference).solved
    cipher, message = instance.data["cipher"], instance.data["message"]
    words = [cipher[str(x)] for x in message]
    # drop the third code word: prefix k = 2, distance d = 1, n = 4, m = 3 -> (2 + 1 - 1/4) / 5
    text = " and ".join(words[:2] + words[3:])
    verdict = task.verify(instance, text)
    k = 2 if message[2] != message[3] else 3  # dropping one of two equal neighbours keeps the prefix longer
    assert verdict.score == pytest.approx((k + 1 - 1 / 4) / 5)
    assert not verdict.solved


def test_gap_rule_and_feedback() -> None:
    task = get_task("stegpoet")
    instance = task.instances(seed=1, length=5, min_gap=2)[0]
    cipher, message = instance.data["cipher"], instance.data["message"]
    words = [cipher[str(x)] for x in message]
    spaced = " la la ".join(words)
    assert task.verify(instance, spaced).solved
    cramped = task.verify(instance, " la ".join(words))
    assert (
        not cramped.solved
        and cramped.score < 1.0
        and "separated by 1 word(s); at least 2" in cramped.feedback
    )
    wrong_first = task.verify(instance, " la la ".join([cipher[str((message[0] + 1) % 10)], *words[1:]]))
    assert "first mismatch is at position 1" in wrong_first.feedback
    extra = task.verify(instance, spaced + " la la " + words[0])
    assert "too many" in extra.feedback
    empty = task.verify(instance, "roses are red")
    assert empty.score == 0.0 and "stops after 0 code words" in empty.feedback
