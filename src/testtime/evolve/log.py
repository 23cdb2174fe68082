"""The JSONL run log: every candidate appended as it is produced, resume without asking the LLM again,
and the lineage of a candidate replayed from the log.

A log starts with one ``header`` record (the method, its settings, the seed and the problem), then one
record per LLM call: ``candidate`` records (the prompt that made it, the raw response, the extracted answer,
score, feedback, solved, parents, island, generation, conversation, turn, tokens, start and end time) and
``select`` records (the LLM's choice of elites for an island reset). Each record has a deterministic ``id``
(e.g. ``g2-i1-c3-t0``: generation 2, island 1, conversation 3, turn 0) and ``seq``, its place in the run's
deterministic order: records are appended in completion order (concurrent calls finish in any order), and
:func:`canonical` sorts them by ``seq``.

Resume: a run given an existing log reads it, checks that the header matches, and answers every call whose
``id`` is in the log from the log (the run's random choices are seeded per generation and island, so they
replay identically); a line cut short by a kill is moved to ``<log>.cut`` and dropped (its call is asked
again). A damaged line elsewhere, or a malformed record, stops the resume with a one-line error and leaves the
file unchanged. Each line is flushed and fsynced as written.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from testtime.errors import UserError

__all__ = ["RunLog", "canonical", "lineage", "render_lineage", "read_log"]

# Header fields that must match for a resume (the budget and the backend may change between attempts).
_HEADER_KEYS = ("method", "settings", "seed", "problem", "sampling")


def _record_problem(record: Any) -> str | None:
    """What is wrong with one decoded log line (None: a well-formed record)."""
    if not isinstance(record, dict):
        return "not a JSON object"
    kind = record.get("kind")
    if kind == "header":
        return None
    if kind not in ("candidate", "select"):
        return f"unknown record kind {kind!r}"
    if not isinstance(record.get("id"), str) or not record["id"]:
        return "no candidate id"

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not is_int(record.get("seq")) or record["seq"] < 0:
        return "seq is not an integer >= 0"
    if not is_int(record.get("attempts", 1)) or record.get("attempts", 1) < 1:
        return "attempts is not an integer >= 1"
    for key in ("input_tokens", "output_tokens"):
        if not is_int(record.get(key, 0)) or record.get(key, 0) < 0:
            return f"{key} is not an integer >= 0"
    for key in ("island", "generation", "conversation", "turn"):
        if record.get(key) is not None and not is_int(record[key]):
            return f"{key} is not an integer"
    for key in ("score", "start", "end"):
        value = record.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"{key} is not a finite number"
    if not isinstance(record.get("solved", False), bool):
        return "solved is not true or false"
    for key in ("text", "answer", "feedback"):
        if not isinstance(record.get(key, ""), str):
            return f"{key} is not a string"
    if record.get("error") is not None and not isinstance(record["error"], str):
        return "error is not a string"
    parents = record.get("parents", [])
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        return "parents is not a list of ids"
    prompt = record.get("prompt", [])
    if not isinstance(prompt, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in prompt
    ):
        return "prompt is not a list of chat messages"
    return None


def _read(path: Path) -> tuple[list[dict[str, Any]], int, bytes]:
    """(records, bytes of the good prefix, the whole file); a last line cut short is left out of both."""
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    records: list[dict[str, Any]] = []
    good_bytes = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            good_bytes += len(line) + 1
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):  # the last line, written in part when the run was killed
                break
            raise UserError(
                f"{path}: line {number} is not a JSON record; the log is damaged (it was left unchanged: "
                "fix or delete that line to resume, or use another --out folder)"
            ) from None
        problem = _record_problem(record)
        if problem is None and record.get("kind") == "header" and records:
            problem = "a second header"
        if problem is not None:
            raise UserError(
                f"{path}: line {number}: {problem}; the log is damaged (it was left unchanged: fix or delete "
                "that line to resume, or use another --out folder)"
            )
        records.append(record)
        good_bytes += len(line) + 1
    return records, min(good_bytes, len(raw)), raw


def read_log(path: str | os.PathLike[str], *, repair: bool = False) -> list[dict[str, Any]]:
    """The records of a log; a last line cut short (a killed run) is dropped, and, when ``repair``, moved
    from the file to ``<log>.cut`` (appended there, so nothing written is ever lost).

    Raises:
        UserError: a line other than the last is not JSON, or a record is malformed (wrong field types).
    """
    path = Path(path)
    if not path.exists():
        return []
    if not path.is_file():
        raise UserError(f"{path} is not a file")
    records, good_bytes, raw = _read(path)
    if repair and good_bytes < len(raw):
        _cut_tail(path, good_bytes, raw)
    return records


def _cut_tail(path: Path, good_bytes: int, raw: bytes) -> None:
    """Move the bytes after ``good_bytes`` (a line cut short by a kill) to ``<log>.cut``, then truncate."""
    side = path.with_name(path.name + ".cut")
    with open(side, "ab") as handle:
        handle.write(raw[good_bytes:] + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    with open(path, "r+b") as handle:
        handle.truncate(good_bytes)


class RunLog:
    """An append-only JSONL log (thread-safe).

    Args:
        path: the file (created with its folder); None keeps records in memory only.
        header: the run's header; an existing log must carry the same ``method``, ``settings``, ``seed``,
            ``problem`` and ``sampling``.
    """

    def __init__(self, path: str | os.PathLike[str] | None, header: Mapping[str, Any]) -> None:
        self.path = None if path is None else Path(path)
        self.records: list[dict[str, Any]] = []
        self.cached: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        header = {"kind": "header", **header}
        if self.path is not None and self.path.exists() and self.path.stat().st_size > 0:
            if not self.path.is_file():
                raise UserError(f"{self.path} is not a file")
            old, good_bytes, raw = _read(self.path)
            if not old or old[0].get("kind") != "header":
                raise UserError(
                    f"{self.path} is not a run log (no header; it was left unchanged); use another --out folder"
                )
            for key in _HEADER_KEYS:
                if json.dumps(old[0].get(key), sort_keys=True) != json.dumps(header.get(key), sort_keys=True):
                    raise UserError(
                        f"{self.path} belongs to a different run ({key} differs); use another --out folder "
                        "or the same settings to resume"
                    )
            if good_bytes < len(raw):  # a line cut short by a kill: kept aside in <log>.cut, then dropped
                _cut_tail(self.path, good_bytes, raw)
            elif not raw.endswith(b"\n"):  # a whole last record without its newline: end the line first
                with open(self.path, "ab") as handle:
                    handle.write(b"\n")
            self.records = old
            self.cached = {r["id"]: r for r in old[1:] if "id" in r}
        else:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write(header)

    @property
    def resumed(self) -> int:
        """Records found in the log when the run started."""
        return len(self.cached)

    def _write(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.records.append(record)
            if self.path is not None:
                with open(self.path, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                    handle.flush()
                    os.fsync(handle.fileno())

    def append(self, record: dict[str, Any]) -> None:
        """Append one record (it must have an ``id`` not yet in the log)."""
        assert "id" in record, "log records carry an id"
        self._write(record)


def canonical(
    records: Iterable[Mapping[str, Any]], *, drop: tuple[str, ...] = ("start", "end")
) -> list[dict]:
    """The records in the run's deterministic order (header first, then by ``seq``), without timing fields:
    two runs that did the same work have equal canonical logs."""
    items = [{k: v for k, v in r.items() if k not in drop} for r in records]
    return sorted(items, key=lambda r: (r.get("kind") != "header", r.get("seq", -1)))


def lineage(records: Iterable[Mapping[str, Any]], candidate_id: str) -> list[dict[str, Any]]:
    """The ancestry of a candidate, breadth first from it: the candidate, its parents (the previous turn of
    its conversation and the parents the conversation started from), their parents, ... each once."""
    by_id = {r["id"]: dict(r) for r in records if r.get("kind") == "candidate"}
    if candidate_id not in by_id:
        raise UserError(f"no candidate {candidate_id!r} in the log")
    order, seen, queue = [], {candidate_id}, [candidate_id]
    while queue:
        current = queue.pop(0)
        record = by_id[current]
        order.append(record)
        for parent in record.get("parents", []):
            if parent in by_id and parent not in seen:
                seen.add(parent)
                queue.append(parent)
    return order


def render_lineage(records: Iterable[Mapping[str, Any]], candidate_id: str, *, width: int = 100) -> str:
    """A text tree of a candidate's lineage: one line per ancestor with its id, score and answer start."""
    records = list(records)
    by_id = {r["id"]: r for r in records if r.get("kind") == "candidate"}
    lines: list[str] = []
    seen: set[str] = set()

    def walk(node: str, depth: int) -> None:
        record = by_id[node]
        answer = " ".join(str(record.get("answer", "")).split())
        if len(answer) > width:
            answer = answer[: width - 3] + "..."
        mark = " (see above)" if node in seen else ""
        lines.append(f"{'  ' * depth}{node} score {record.get('score', 0):.2f}{mark}: {answer}")
        if node in seen:
            return
        seen.add(node)
        for parent in record.get("parents", []):
            if parent in by_id:
                walk(parent, depth + 1)

    if candidate_id not in by_id:
        raise UserError(f"no candidate {candidate_id!r} in the log")
    walk(candidate_id, 0)
    return "\n".join(lines)
