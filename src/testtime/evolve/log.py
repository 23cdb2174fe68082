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
replay identically); a line cut short by a kill is dropped. Each line is flushed and fsynced as written.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from testtime.errors import UserError

__all__ = ["RunLog", "canonical", "lineage", "render_lineage", "read_log"]

# Header fields that must match for a resume (the budget and the backend may change between attempts).
_HEADER_KEYS = ("method", "settings", "seed", "problem", "sampling")


def read_log(path: str | os.PathLike[str], *, repair: bool = False) -> list[dict[str, Any]]:
    """The records of a log; a last line cut short (a killed run) is dropped, and removed from the file when
    ``repair``.

    Raises:
        UserError: a line other than the last is not JSON.
    """
    path = Path(path)
    if not path.exists():
        return []
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
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            if number == len(lines):  # the last line, written in part when the run was killed
                break
            raise UserError(f"{path}: line {number} is not a JSON record; the log is damaged") from None
        records.append(record)
        good_bytes += len(line) + 1
    if repair and good_bytes < len(raw):
        with open(path, "r+b") as handle:
            handle.truncate(min(good_bytes, len(raw)))
    return records


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
            old = read_log(self.path, repair=True)
            if not old or old[0].get("kind") != "header":
                raise UserError(f"{self.path} is not a run log (no header); use another --out folder")
            for key in _HEADER_KEYS:
                if json.dumps(old[0].get(key), sort_keys=True) != json.dumps(header.get(key), sort_keys=True):
                    raise UserError(
                        f"{self.path} belongs to a different run ({key} differs); use another --out folder "
                        "or the same settings to resume"
                    )
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
