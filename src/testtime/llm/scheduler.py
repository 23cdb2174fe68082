"""Continuous batching: one thread runs an engine's :class:`~testtime.llm.engine.DecodeBatch` for every caller.

Iteration-level scheduling (Orca, Yu et al., OSDI 2022; vLLM, Kwon et al., SOSP 2023): requests arrive from
any thread or asyncio task, each with its own sampling parameters; at every iteration the scheduler thread

1. admits waiting rows, first come first served, while the batch has free slots and the KV bound holds
   (``rows x longest prompt + max_tokens <= max_kv_tokens``): they are queued for prefill (identical
   prompts once);
2. runs one step for the whole batch: every decoding row samples one token with its own parameters and
   generator, finished and cancelled rows leave and their requests are answered as soon as their last row
   is done; then one forward computes the decoding rows' next logits together with up to
   ``prefill_chunk`` tokens of the queued prompts (chunked prefill: a 600-token prompt joins over a few
   iterations while the others keep decoding, instead of stalling them for its whole prefill). A row whose
   prompt is complete decodes from the next iteration on.

Admission stops at the first row that does not fit (no overtaking, so a long request is not starved by
short ones). A row too large for the KV bound even alone is refused at submission. Each iteration's prefill
and step run under :meth:`Engine.computing`, so a trainer's ``with engine.updating_weights():`` pauses the
scheduler between steps and the next step reads the new weights.

The paper systems preempt and swap KV blocks under memory pressure (vLLM's paging); here a row keeps its
slot until it finishes, so admission control alone bounds memory.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import deque

import torch

from testtime.llm.engine import DEFAULT_PREFILL_CHUNK, DecodeBatch, Engine, Row, _threads

__all__ = ["RequestHandle", "Scheduler"]


class RequestHandle:
    """One submitted request: its rows (``n`` samples), a future, and cancellation.

    Attributes:
        rows: the request's rows; each row's ``tokens`` grow as it runs.
        future: resolves to ``rows`` when every row has finished (or was cancelled), or to the exception
            that broke the step running them.
    """

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows
        self.future: concurrent.futures.Future[list[Row]] = concurrent.futures.Future()
        self._remaining = len(rows)
        self._lock = threading.Lock()
        for index, row in enumerate(rows):
            row.tag = (self, index)

    def cancel(self) -> None:
        """Make every unfinished row leave at the scheduler's next iteration (its slot is freed then)."""
        for row in self.rows:
            row.cancelled = True

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return all(row.cancelled for row in self.rows)

    def _row_done(self) -> None:
        with self._lock:
            self._remaining -= 1
            done = self._remaining == 0
        if done and not self.future.done():
            self.future.set_result(self.rows)

    def _fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class Scheduler:
    """Runs one engine for many concurrent requests (see the module docstring).

    Args:
        engine: the engine.
        max_batch_size: the most running rows (KV slots).
        max_kv_tokens: bound on the KV cache in token columns (None: ``max_batch_size`` alone bounds it).
        prefill_chunk: the most prompt tokens prefilled per iteration (chunked prefill, see the module
            docstring); None prefills every admitted prompt whole at the next iteration.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch_size: int = 32,
        max_kv_tokens: int | None = None,
        prefill_chunk: int | None = DEFAULT_PREFILL_CHUNK,
    ) -> None:
        self.engine = engine
        self.batch = DecodeBatch(
            engine, max_rows=max_batch_size, max_kv_tokens=max_kv_tokens, prefill_chunk=prefill_chunk
        )
        self._waiting: deque[Row] = deque()
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.requests_seen = 0  # requests submitted
        self.steps = 0  # decoding steps run
        self.prefills = 0  # admissions (prefill forwards) run
        self.max_running = 0  # the most rows that ran together

    # ------------------------------------------------------------------ callers' side

    def submit(self, rows: list[Row]) -> RequestHandle:
        """Queue a request's rows; they join the running batch at the next iteration that has room.

        Raises:
            ValueError: a row that could not fit even in an empty batch, or a closed scheduler.
        """
        if not rows:
            raise ValueError("a request needs at least one row")
        for row in rows:
            if len(row.prompt) == 0:
                raise ValueError("every prompt needs at least one token")
            if not self.batch.fits_alone([row]):
                raise ValueError(
                    f"a prompt of {len(row.prompt)} tokens plus max_tokens {row.max_new_tokens} does not fit "
                    f"this engine's KV budget of {self.batch.max_kv_tokens} tokens"
                )
        handle = RequestHandle(rows)
        with self._condition:
            if self._closed:
                raise ValueError("the scheduler is closed")
            self.requests_seen += 1
            self._waiting.extend(rows)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="testtime-scheduler", daemon=True)
                self._thread.start()
            self._condition.notify_all()
        return handle

    @property
    def running(self) -> int:
        """Rows in the running batch now (decoding, or admitted and waiting for their prefill to complete)."""
        return len(self.batch.rows) + self.batch.num_pending

    @property
    def waiting(self) -> int:
        """Rows queued for admission now."""
        return len(self._waiting)

    def close(self, timeout: float = 30.0) -> None:
        """Cancel what is queued or running and stop the thread."""
        with self._condition:
            self._closed = True
            for row in self._waiting:
                row.cancelled = True
            for row in self.batch.rows + [r for group in self.batch.pending for r in group.rows]:
                row.cancelled = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    # ------------------------------------------------------------------ the scheduler thread

    def _take(self) -> tuple[list[Row], list[Row]]:
        """Under the lock: rows to admit now, and queued rows that were cancelled before admission."""
        admit: list[Row] = []
        dropped: list[Row] = []
        while self._waiting:
            row = self._waiting[0]
            if row.cancelled:
                dropped.append(self._waiting.popleft())
                continue
            if not self.batch.fits(admit + [row]):
                break
            admit.append(self._waiting.popleft())
        return admit, dropped

    def _run(self) -> None:
        engine = self.engine
        while True:
            with self._condition:
                while not self._closed and not self._waiting and not self.batch.active:
                    self._condition.wait()
                admit, dropped = self._take()
                closed = self._closed
            for row in dropped:
                row.finish_reason = "cancelled"
                self._finish(row)
            try:
                with _threads(engine.num_threads), torch.inference_mode():
                    if admit:
                        with engine.computing():
                            for row in self.batch.admit(admit):
                                self._finish(row)
                        self.prefills += 1
                    self.max_running = max(self.max_running, self.running)
                    if self.batch.active:
                        with engine.computing():
                            finished = self.batch.step()
                        self.steps += 1
                        for row in finished:
                            self._finish(row)
            except Exception as exc:  # the running requests fail; the scheduler keeps serving
                queued = [r for group in self.batch.pending for r in group.rows]
                rows = admit + self.batch.rows + queued
                failed = {id(r.tag[0]): r.tag[0] for r in rows if r.tag is not None}
                self.batch.cancel_all()
                for handle in failed.values():
                    handle._fail(exc)
            if closed and not self.batch.active:
                with self._condition:
                    leftover = list(self._waiting)
                    self._waiting.clear()
                for row in leftover:
                    row.finish_reason = "cancelled"
                    self._finish(row)
                return

    @staticmethod
    def _finish(row: Row) -> None:
        if row.tag is not None:
            row.tag[0]._row_done()
