"""Admission control and micro-batching for the search service.

Every search request becomes a :class:`Pending` entry in one bounded queue. Worker threads take the oldest entry,
wait up to ``window_ms`` after its arrival for more, and answer all entries that want the same result shape
(``k``, moments, relevance) with ONE call of the batch function (for the service: one ``Retriever.search`` over the
list of their queries, one model pass and one FAISS batch). Bounds:

- the queue holds at most ``max_queue`` queries; a request that would pass it is refused at once with
  :class:`Overloaded` (the service answers 503 with ``Retry-After``: the queued work over the measured rate);
- a request waits at most ``timeout_s`` in all (queue + search): the waiter stops waiting at its deadline
  (:class:`SearchTimeout`, also 503 + ``Retry-After``) and a worker drops entries whose deadline has passed before
  spending any work on them.

``max_batch = 1`` turns joining off (each request is searched alone, in arrival order), for latency-only deployments;
the bounds still hold. Entries of one batch are answered from one call, so from one index generation.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BatchSettings", "Overloaded", "Pending", "SearchBatcher", "SearchTimeout"]

BatchFunction = Callable[[Hashable, list[str]], Sequence[Any]]  # (key, queries) -> one answer per query


class Overloaded(Exception):
    """The queue is full (or the batcher is stopping); try again after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SearchTimeout(Exception):
    """The request was not answered within its timeout; try again after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class BatchSettings:
    """How requests are admitted and joined.

    Attributes:
        window_ms: how long the oldest queued request waits for others to join its batch (0: join only what is
            already queued).
        max_batch: most queries in one batch call (1: no joining; a request with more queries runs alone).
        max_queue: most queries waiting at once; more are refused (503) instead of queueing without bound.
        timeout_s: longest a request waits for its answer, queue and search together (503 after it).
        workers: threads running batch calls (1 keeps the model busy without two batches fighting for 2 cores).
    """

    window_ms: float = 2.0
    max_batch: int = 64
    max_queue: int = 256
    timeout_s: float = 10.0
    workers: int = 1

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not (isinstance(self.window_ms, (int, float)) and 0 <= self.window_ms <= 1000):
            raise ValueError(f"window_ms must be between 0 and 1000 milliseconds, got {self.window_ms!r}")
        if not (isinstance(self.timeout_s, (int, float)) and self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ValueError(f"timeout_s must be a positive number of seconds, got {self.timeout_s!r}")


@dataclass(eq=False)
class Pending:
    """One queued request: its queries, the result shape they share, its deadline and the future answering it."""

    key: Hashable
    queries: list[str]
    enqueued: float
    deadline: float
    future: Future[list[Any]] = field(default_factory=Future)


class SearchBatcher:
    """A bounded queue of search requests and the worker threads that answer them in batches.

    Args:
        run: answers a batch: ``run(key, queries)`` returns one answer per query, in order. Exceptions it raises
            reach the waiters (when a joined batch fails, its requests are retried one by one, so a request is
            only failed by its own queries).
        settings: the bounds and the batching choice.
    """

    def __init__(self, run: BatchFunction, settings: BatchSettings | None = None) -> None:
        self.settings = settings or BatchSettings()
        self._run = run
        self._queue: deque[Pending] = deque()
        self._queued_queries = 0
        self._condition = threading.Condition()
        self._closed = False
        self._seconds_per_query = 0.05  # running estimate (exponential average), for Retry-After
        self.stats = {"batches": 0, "queries": 0, "refused": 0, "timed_out": 0}
        self._threads = [
            threading.Thread(target=self._work, name=f"prvr-search-{n}", daemon=True)
            for n in range(self.settings.workers)
        ]
        for thread in self._threads:
            thread.start()

    # ---------------------------------------------------------------------------------------- the waiting side

    @property
    def queued(self) -> int:
        """Queries waiting now (not yet taken by a worker)."""
        with self._condition:
            return self._queued_queries

    def retry_after_s(self) -> int:
        """Whole seconds until the queued work is likely done (at least 1)."""
        with self._condition:
            backlog = self._queued_queries * self._seconds_per_query / self.settings.workers
        return max(1, math.ceil(backlog))

    def submit(self, key: Hashable, queries: Sequence[str]) -> Pending:
        """Queue one request.

        Raises:
            Overloaded: when the queue cannot take ``len(queries)`` more queries, or the batcher is closed.
        """
        queries = list(queries)
        now = time.monotonic()
        pending = Pending(key, queries, now, now + self.settings.timeout_s)
        with self._condition:
            if self._closed:
                raise Overloaded("the server is shutting down; retry against a running instance", 1)
            if self._queued_queries + len(queries) > self.settings.max_queue:
                self.stats["refused"] += 1
                backlog = self._queued_queries * self._seconds_per_query / self.settings.workers
                raise Overloaded(
                    f"the server is at capacity ({self._queued_queries} queries queued, at most "
                    f"{self.settings.max_queue}); retry after the Retry-After seconds",
                    max(1, math.ceil(backlog)),
                )
            self._queue.append(pending)
            self._queued_queries += len(queries)
            self._condition.notify()
        return pending

    def wait(self, pending: Pending) -> list[Any]:
        """Block until ``pending`` is answered (its answers, one per query) or its deadline passes."""
        try:
            return pending.future.result(timeout=max(0.0, pending.deadline - time.monotonic()))
        except TimeoutError:
            raise self._timed_out(pending) from None

    async def answer(self, key: Hashable, queries: Sequence[str]) -> list[Any]:
        """:meth:`submit` + wait without blocking the event loop (the service's path)."""
        pending = self.submit(key, queries)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(pending.future),
                                          timeout=max(0.0, pending.deadline - time.monotonic()))
        except TimeoutError:  # asyncio.TimeoutError is TimeoutError from Python 3.11
            raise self._timed_out(pending) from None

    def _timed_out(self, pending: Pending) -> SearchTimeout:
        pending.future.cancel()  # a worker that has not started it skips it
        with self._condition:
            self.stats["timed_out"] += 1
        return SearchTimeout(
            f"no answer within the request timeout of {self.settings.timeout_s:g} s (the server is overloaded); "
            "retry after the Retry-After seconds", self.retry_after_s()
        )

    def close(self) -> None:
        """Stop the workers after their current batch; queued requests are refused with :class:`Overloaded`."""
        with self._condition:
            self._closed = True
            left = list(self._queue)
            self._queue.clear()
            self._queued_queries = 0
            self._condition.notify_all()
        for pending in left:
            if pending.future.set_running_or_notify_cancel():
                pending.future.set_exception(Overloaded("the server is shutting down", 1))
        for thread in self._threads:
            thread.join()

    # ---------------------------------------------------------------------------------------- the working side

    def _take(self) -> list[Pending] | None:
        """The next batch: the oldest entry and the entries with its key that fit, after its window."""
        settings = self.settings
        with self._condition:
            while not self._queue and not self._closed:
                self._condition.wait()
            if self._closed:
                return None
            first = self._queue[0]
            window_end = first.enqueued + settings.window_ms / 1000
            while settings.max_batch > 1 and not self._closed:
                joinable = sum(len(p.queries) for p in self._queue if p.key == first.key)
                left = window_end - time.monotonic()
                if joinable >= settings.max_batch or left <= 0:
                    break
                self._condition.wait(timeout=left)
            if self._closed or not self._queue:
                return None if self._closed else []
            first = self._queue[0]  # another worker may have taken the first one meanwhile
            batch, size, kept = [], 0, deque()
            for pending in self._queue:
                fits = not batch or size + len(pending.queries) <= settings.max_batch
                if pending.key == first.key and fits and (settings.max_batch > 1 or not batch):
                    batch.append(pending)
                    size += len(pending.queries)
                else:
                    kept.append(pending)
            self._queue = kept
            self._queued_queries -= size
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            live = []
            now = time.monotonic()
            for pending in batch:
                if not pending.future.set_running_or_notify_cancel():
                    continue  # its waiter gave up
                if pending.deadline <= now:
                    pending.future.set_exception(self._expired(pending))
                    continue
                live.append(pending)
            if live:
                self._answer(live)

    def _expired(self, pending: Pending) -> SearchTimeout:
        with self._condition:
            self.stats["timed_out"] += 1
        return SearchTimeout(f"the request waited past its timeout of {self.settings.timeout_s:g} s in the queue; "
                             "retry after the Retry-After seconds", self.retry_after_s())

    def _answer(self, batch: list[Pending]) -> None:
        queries = [query for pending in batch for query in pending.queries]
        start = time.perf_counter()
        try:
            answers = list(self._run(batch[0].key, queries))
            if len(answers) != len(queries):
                raise RuntimeError(f"the batch function gave {len(answers)} answers for {len(queries)} queries")
        except BaseException as error:
            if len(batch) > 1:  # find whose queries fail: each request alone
                for pending in batch:
                    self._answer_one(pending)
                return
            batch[0].future.set_exception(error)
            return
        self._record(time.perf_counter() - start, len(queries))
        position = 0
        for pending in batch:
            pending.future.set_result(answers[position:position + len(pending.queries)])
            position += len(pending.queries)

    def _answer_one(self, pending: Pending) -> None:
        try:
            answers = list(self._run(pending.key, pending.queries))
        except BaseException as error:
            pending.future.set_exception(error)
        else:
            pending.future.set_result(answers)

    def _record(self, seconds: float, queries: int) -> None:
        with self._condition:
            self.stats["batches"] += 1
            self.stats["queries"] += queries
            self._seconds_per_query = 0.8 * self._seconds_per_query + 0.2 * seconds / queries
