"""Train and test cannot leak: generated splits are disjoint by content, GSM8K's splits share no question."""

from __future__ import annotations

import hashlib
import json

import pytest

from testtime.tasks import get_task
from testtime.tasks.base import TRAIN_BUCKETS, split_of_content

# generated tasks at their smallest problem spaces (where a chance collision is likeliest) and defaults
SMALL = {
    "countdown": {"num_numbers": 2, "max_number": 5},
    "arithmetic": {"digits": 1, "terms": 2},
    "stegpoet": {"length": 2, "vocab": 2, "min_gap": 0},
    "meeting-planning": {"num_people": 1},
    "trip-planning": {"num_cities": 2},
    "calendar-scheduling": {"num_people": 1},
}


def _digest(data: dict) -> str:
    """A content hash written here (not the module's): SHA-1 of the JSON with sorted keys."""
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()


@pytest.mark.parametrize("name", sorted(SMALL))
def test_generated_splits_are_disjoint(name: str) -> None:
    task = get_task(name)
    for knobs in (SMALL[name], {}):
        train = [i for seed in range(3) for i in task.instances("train", seed=seed, n=60, **knobs)]
        test = [i for seed in range(3) for i in task.instances("test", seed=seed, n=60, **knobs)]
        assert not {_digest(dict(i.data)) for i in train} & {_digest(dict(i.data)) for i in test}
        assert all(i.id.startswith("train-seed") for i in train)
        assert all(i.id.startswith("seed") for i in test)
        assert all(split_of_content(i.data) == "train" for i in train)
        assert all(split_of_content(i.data) == "test" for i in test)
        assert all(task.verify(i, i.reference).solved for i in train[:5] if i.reference is not None)


def test_the_partition_sends_about_one_in_sixteen_contents_to_train() -> None:
    contents = [{"n": i} for i in range(4_000)]
    share = sum(split_of_content(c) == "train" for c in contents) / len(contents)
    assert abs(share - 1 / TRAIN_BUCKETS) < 0.015


def test_gsm8k_train_split() -> None:
    task = get_task("gsm8k")
    train, test = task.instances("train", n=None), task.instances("test", n=None)
    assert (len(train), len(test)) == (7_473, 1_319)
    assert not {i.data["question"].strip() for i in train} & {i.data["question"].strip() for i in test}
    assert task.instances(seed=0, n=1)[0].id.startswith("test-")  # test stays the default
    first = task.instances("train", seed=0, n=3)
    assert all(i.id.startswith("train-") and task.verify(i, i.reference).solved for i in first)
