"""The task interface: verdicts, registry, wrapping a user's function, TRL-style rewards, determinism."""

from __future__ import annotations

import json

import pytest

from testtime.errors import UserError
from testtime.tasks import (
    Instance,
    Task,
    Verdict,
    as_reward_fn,
    completion_text,
    get_task,
    list_tasks,
    register_task,
    task_from_function,
)

GENERATED = [
    "meeting-planning",
    "trip-planning",
    "calendar-scheduling",
    "stegpoet",
    "countdown",
    "arithmetic",
]
DATASETS = ["travelplanner", "arc-easy", "arc-challenge", "gsm8k", "humaneval"]


def test_registry_lists_every_issue_task_name() -> None:
    assert list_tasks()[:11] == [
        "meeting-planning", "trip-planning", "calendar-scheduling", "stegpoet", "travelplanner", "countdown",
        "arithmetic", "arc-easy", "arc-challenge", "gsm8k", "humaneval",
    ]  # fmt: skip
    for name in list_tasks():
        task = get_task(name)
        assert isinstance(task, Task) and task.name == name and task.description
    with pytest.raises(UserError, match="unknown task"):
        get_task("no-such-task")


def test_verdict_score_is_one_exactly_when_solved() -> None:
    Verdict(score=1.0, feedback="", solved=True)
    Verdict(score=0.3, feedback="", solved=False)
    with pytest.raises(ValueError, match="Verdict score"):
        Verdict(score=0.5, feedback="", solved=True)
    with pytest.raises(ValueError, match="Verdict score"):
        Verdict(score=1.0, feedback="", solved=False)
    with pytest.raises(ValueError, match="Verdict score"):
        Verdict(score=1.5, feedback="", solved=False)


@pytest.mark.parametrize("name", GENERATED)
def test_generated_instances_are_deterministic_and_independent_of_n(name: str) -> None:
    task = get_task(name)
    five = task.instances(seed=7, n=5)
    again = task.instances(seed=7, n=5)
    assert [i.to_dict() for i in five] == [i.to_dict() for i in again]
    assert task.instances(seed=7, n=2) == five[:2]
    other = task.instances(seed=8, n=5)
    assert [i.data for i in other] != [i.data for i in five]
    assert task.instances("train", seed=7, n=1)[0].data != five[0].data  # splits differ


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_instances_are_deterministic(name: str) -> None:
    task = get_task(name)
    first = task.instances(seed=3, n=4)
    assert [i.id for i in first] == [i.id for i in task.instances(seed=3, n=4)]
    assert [i.id for i in task.instances(seed=3, n=2)] == [i.id for i in first[:2]]
    assert [i.id for i in task.instances(seed=4, n=4)] != [i.id for i in first]


def test_instance_json_round_trip() -> None:
    instance = get_task("countdown").instances(seed=1)[0]
    assert Instance.from_dict(json.loads(json.dumps(instance.to_dict()))) == instance


def test_bad_split_and_knobs_are_user_errors() -> None:
    task = get_task("countdown")
    with pytest.raises(UserError, match="splits"):
        task.instances("validation")
    with pytest.raises(UserError, match="no difficulty knob"):
        task.instances(num_people=3)
    with pytest.raises(UserError, match=">= 1"):
        task.instances(num_numbers=0)
    with pytest.raises(UserError, match="at most"):
        get_task("meeting-planning").instances(num_people=30)


def _parity(instance: Instance, answer: str) -> tuple[float, str, bool]:
    want = instance.data["n"] % 2
    try:
        got = int(answer.strip()) % 2
    except ValueError:
        return 0.0, "not a number", False
    return (1.0, "ok", True) if got == want else (0.2, "wrong parity", False)


def test_task_from_function_with_fixed_instances_and_generator() -> None:
    fixed = task_from_function(
        "parity", _parity, instances=[{"n": 3}, {"n": 4}], prompt_fn=lambda i: f"{i.data['n']}"
    )
    instances = fixed.instances(seed=0, n=None)
    assert sorted(i.data["n"] for i in instances) == [3, 4]
    three = next(i for i in instances if i.data["n"] == 3)
    assert fixed.verify(three, "5") == Verdict(score=1.0, feedback="ok", solved=True)
    assert fixed.verify(three, "6").score == 0.2
    assert fixed.prompt(three) == "3"
    generated = task_from_function("parity-gen", _parity, instances=lambda rng, i: {"n": rng.randint(0, 99)})
    a, b = generated.instances(seed=5, n=2), generated.instances(seed=5, n=2)
    assert a == b and a[0].id == "seed5-0"
    # a function claiming score 1.0 without solving is clipped below 1
    sloppy = task_from_function("sloppy", lambda i, a: (1.0, "", False), instances=[{"n": 1}])
    assert sloppy.verify(sloppy.instances()[0], "x").score < 1.0


def test_register_a_user_task_class() -> None:
    class Echo(Task):
        name = "echo-test"
        description = "say the word"

        def generate(self, rng, *, index, seed, **difficulty):  # noqa: ANN001, ANN202
            return Instance(task=self.name, id=str(index), data={"word": rng.choice(["a", "b"])})

        def prompt(self, instance: Instance) -> str:
            return f"say {instance.data['word']}"

        def verify(self, instance: Instance, answer: str) -> Verdict:
            ok = answer.strip() == instance.data["word"]
            return Verdict(score=float(ok), feedback="", solved=ok)

    register_task("echo-test", Echo)
    assert "echo-test" in list_tasks() and "echo-test" not in list_tasks(include_user=False)
    task = get_task("echo-test")
    instance = task.instances(seed=0)[0]
    assert task.verify(instance, instance.data["word"]).solved
    with pytest.raises(ValueError, match="built-in"):
        register_task("countdown", Echo)


def test_reward_function_follows_trl_convention() -> None:
    task = get_task("arithmetic")
    instances = task.instances(seed=0, n=3)
    reward = as_reward_fn(task)
    assert reward.__name__ == "arithmetic_reward"
    completions = [
        instances[0].reference,
        "The answer is 0.",
        [{"role": "assistant", "content": instances[2].reference}],
    ]
    column = [instances[0], instances[1].to_dict(), json.dumps(instances[2].to_dict())]
    assert reward(["p"] * 3, completions, instance=column) == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="column"):
        reward(["p"], ["x"])
    assert completion_text([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]) == "a"
    assert completion_text(None) == ""


def test_a_failing_verifier_becomes_a_zero_verdict_with_the_error() -> None:
    def broken(instance: Instance, answer: str) -> tuple[float, str, bool]:
        raise KeyError("oops")

    task = task_from_function("broken", broken, instances=[{"data": {}}])
    with pytest.warns(RuntimeWarning, match="broken: the verifier failed"):
        verdict = task.verify(task.instances(n=1)[0], "anything")
    assert verdict.score == 0.0 and not verdict.solved and "KeyError" in verdict.details["error"]
    wordy = task_from_function("wordy", lambda i, a: (0.5, "x" * 10_000, False), instances=[{"data": {}}])
    assert len(wordy.verify(wordy.instances(n=1)[0], "a").feedback) <= 2_000
    seen = []
    echo = task_from_function(
        "echo", lambda i, a: (seen.append(a) or 0.0, "", False), instances=[{"data": {}}]
    )
    echo.verify(echo.instances(n=1)[0], "\u0664\u0663\u0667 apples")  # Arabic-Indic 437
    echo.verify(echo.instances(n=1)[0], None)  # type: ignore[arg-type]
    assert seen == ["437 apples", ""]
