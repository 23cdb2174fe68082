"""Verifiable tasks: generate or load problems, render prompts, verify answers -> (score, feedback, solved).

One interface (:class:`Task`, :class:`Verdict`) serves Mind Evolution's fitness, GRPO's and SVF's rewards
and evaluation's accuracy. See docs/tasks.md.
"""

from testtime.tasks.base import (
    FunctionTask,
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

__all__ = [
    "FunctionTask",
    "Instance",
    "Task",
    "Verdict",
    "as_reward_fn",
    "completion_text",
    "get_task",
    "list_tasks",
    "register_task",
    "task_from_function",
]
