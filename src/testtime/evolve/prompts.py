"""The prompts of Mind Evolution's Refinement through Critical Conversation (RCC) and of the baselines.

The structure follows the paper (Lee et al., arXiv 2501.09891, §3.2 and Figure 2): a conversation starts
from the problem and zero or more *parents* (earlier solutions with their evaluation); a **critic** first
analyses the parents and the evaluator's feedback, then an **author** proposes a new solution; each later
turn shows the evaluation of the last proposal and asks for a critique and a refinement. Both roles are
written by one LLM response (one call per candidate, as the paper counts calls); the author's solution
follows the marker line ``PROPOSED SOLUTION:``.

Table 4's switches change the text: without the critic the response is the author's solution only;
without textual feedback parents and proposals show their score but not the evaluator's feedback; without
strategy/question prompts the critic is not given the guiding questions. The wording is this project's; the
paper's exact prompts are task-specific and not reproduced.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from testtime.llm.protocol import Message

__all__ = [
    "Parent",
    "extract_answer",
    "parse_selection",
    "plain_messages",
    "rcc_first_message",
    "rcc_followup_message",
    "reset_selection_messages",
    "revision_message",
]


@dataclass(frozen=True, kw_only=True)
class Parent:
    """A solution shown in a prompt with its evaluation."""

    answer: str
    score: float
    feedback: str


def _cut(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 15] + " ...[truncated]"


def _evaluation(parent: Parent, *, textual_feedback: bool, max_chars: int) -> str:
    lines = [f"Score: {parent.score:.2f} (1.00 means solved)"]
    if textual_feedback and parent.feedback.strip():
        lines.append(f"Evaluator feedback: {_cut(parent.feedback, max_chars)}")
    return "\n".join(lines)


_STRATEGY_QUESTIONS = (
    "Before proposing, the critic answers these questions: Which constraints or requirements does each "
    "proposal violate, according to the evaluation? What does each proposal do well that is worth keeping? "
    "Which different strategy could avoid the mistakes? How can the good parts of several proposals be "
    "combined?"
)


def _instructions(*, critic: bool, strategy_questions: bool, marker: str, refine: bool) -> str:
    task = "a refined solution" if refine else "a new solution"
    if not critic:
        return (
            f"Write {task} to the problem. Write the line '{marker}' and then the complete solution in the "
            "format the problem asks for."
        )
    parts = [
        "Work as two characters. First the CRITIC analyses the proposals and their evaluation: what is "
        "wrong, why, and how to fix it.",
    ]
    if strategy_questions:
        parts.append(_STRATEGY_QUESTIONS)
    parts.append(
        f"Then the AUTHOR writes {task} that fixes the problems the critic found: the line '{marker}' "
        "followed by the complete solution in the format the problem asks for."
    )
    return " ".join(parts)


def rcc_first_message(
    problem: str,
    parents: Sequence[Parent],
    *,
    critic: bool = True,
    textual_feedback: bool = True,
    strategy_questions: bool = True,
    marker: str = "PROPOSED SOLUTION:",
    max_chars: int = 2000,
) -> Message:
    """The first user message of an RCC conversation: the problem, the parents and the instructions."""
    blocks = [f"Problem:\n{problem.strip()}"]
    if parents:
        blocks.append(
            "Earlier proposed solutions and their evaluation (recombine their good parts and fix their "
            "mistakes):"
        )
        for index, parent in enumerate(parents, 1):
            blocks.append(
                f"Proposal {index}:\n{_cut(parent.answer, max_chars)}\n"
                + _evaluation(parent, textual_feedback=textual_feedback, max_chars=max_chars)
            )
        blocks.append(
            _instructions(critic=critic, strategy_questions=strategy_questions, marker=marker, refine=True)
        )
    else:
        blocks.append(
            _instructions(critic=False, strategy_questions=False, marker=marker, refine=False)
            if not critic
            else f"Think about the problem step by step, then write the line '{marker}' and the complete "
            "solution in the format the problem asks for."
        )
    return {"role": "user", "content": "\n\n".join(blocks)}


def rcc_followup_message(
    last: Parent,
    *,
    critic: bool = True,
    textual_feedback: bool = True,
    strategy_questions: bool = True,
    marker: str = "PROPOSED SOLUTION:",
    max_chars: int = 2000,
) -> Message:
    """A later turn's user message: the evaluation of the last proposal and the request to refine it."""
    text = (
        "Your proposed solution was evaluated.\n"
        + _evaluation(last, textual_feedback=textual_feedback, max_chars=max_chars)
        + "\n\n"
        + _instructions(critic=critic, strategy_questions=strategy_questions, marker=marker, refine=True)
    )
    return {"role": "user", "content": text}


def revision_message(last: Parent, *, marker: str = "PROPOSED SOLUTION:", max_chars: int = 2000) -> Message:
    """Sequential-Revision+'s turn message (RCC's follow-up with the critic, feedback and questions on)."""
    return rcc_followup_message(last, marker=marker, max_chars=max_chars)


def plain_messages(problem: str) -> list[Message]:
    """The problem alone (1-pass and Best-of-N)."""
    return [{"role": "user", "content": problem}]


def reset_selection_messages(
    problem: str, candidates: Sequence[Parent], num_top: int, *, max_chars: int = 2000
) -> list[Message]:
    """Ask the LLM to choose ``num_top`` good and mutually different candidates for an island reset (§3.2)."""
    blocks = [f"Problem:\n{problem.strip()}", "Candidate solutions:"]
    for index, cand in enumerate(candidates, 1):
        blocks.append(f"Candidate {index} (score {cand.score:.2f}):\n{_cut(cand.answer, max_chars)}")
    blocks.append(
        f"Choose the {num_top} candidates that are good and substantially different from each other. "
        f"Answer with their numbers only, separated by commas (for example: 1, 4, 7)."
    )
    return [{"role": "user", "content": "\n\n".join(blocks)}]


def extract_answer(text: str, marker: str = "PROPOSED SOLUTION:") -> str:
    """The author's solution: the text after the last ``marker`` (case-insensitive), or all of it."""
    index = text.lower().rfind(marker.lower())
    if index < 0:
        return text.strip()
    return text[index + len(marker) :].strip()


def parse_selection(text: str, num_candidates: int, num_top: int) -> list[int]:
    """0-based indices chosen by the LLM for a reset: the first ``num_top`` distinct valid numbers in the
    text (1-based there); fewer when the text names fewer (the caller fills up by score)."""
    chosen: list[int] = []
    for match in re.findall(r"\d+", text):
        value = int(match) - 1
        if 0 <= value < num_candidates and value not in chosen:
            chosen.append(value)
        if len(chosen) == num_top:
            break
    return chosen
