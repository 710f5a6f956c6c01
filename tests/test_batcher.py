"""The search queue: joining, the bounds (queue size, timeout), failure isolation and shutdown, with a fake batch
function whose calls are recorded and can be held at a gate (no timing assertions: the gates decide the order)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from prvr.services.batcher import BatchSettings, Overloaded, SearchBatcher, SearchTimeout


class Recorder:
    """A batch function: answers ``query.upper()``; records each call's key and queries; the first ``hold`` calls
    wait at a gate until :meth:`release`; queries containing "bad" make the call fail."""

    def __init__(self, hold: int = 0) -> None:
        self.calls: list[tuple[object, list[str]]] = []
        self.hold = hold
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, key, queries):
        with self.lock:
            self.calls.append((key, list(queries)))
            held = len(self.calls) <= self.hold
        if held:
            self.entered.set()
            assert self.gate.wait(30), "the test never released the gate"
        if any("bad" in q for q in queries):
            raise ValueError(f"refused {queries}")
        return [q.upper() for q in queries]

    def release(self) -> None:
        self.gate.set()


def _wait_queued(batcher: SearchBatcher, n: int) -> None:
    deadline = time.monotonic() + 30
    while batcher.queued < n:
        assert time.monotonic() < deadline, f"only {batcher.queued} of {n} queries were queued"
        time.sleep(0.005)


def _submit_behind_a_held_call(batcher: SearchBatcher, recorder: Recorder, requests: list[tuple[object, list[str]]]):
    """A first request enters the batch function and is held; ``requests`` queue behind it; then the gate opens."""
    first = batcher.submit("k", ["first"])
    assert recorder.entered.wait(30)
    pending = [batcher.submit(key, queries) for key, queries in requests]
    _wait_queued(batcher, sum(len(q) for _, q in requests))
    recorder.release()
    return first, pending


def test_queued_requests_are_joined_into_one_call_per_key() -> None:
    recorder = Recorder(hold=1)
    batcher = SearchBatcher(recorder, BatchSettings(window_ms=0, max_batch=64))
    try:
        first, pending = _submit_behind_a_held_call(
            batcher, recorder, [("k", ["a"]), ("k", ["b", "c"]), ("other", ["d"]), ("k", ["e"])]
        )
        assert batcher.wait(first) == ["FIRST"]
        answers = [batcher.wait(p) for p in pending]
    finally:
        batcher.close()
    assert answers == [["A"], ["B", "C"], ["D"], ["E"]]  # each request its own answers, in order
    assert recorder.calls == [("k", ["first"]), ("k", ["a", "b", "c", "e"]), ("other", ["d"])]
    assert batcher.stats["batches"] == 3 and batcher.stats["queries"] == 6


def test_max_batch_caps_a_call_and_one_turns_joining_off() -> None:
    for max_batch, expected in ((3, [["first"], ["a", "b", "c"], ["d", "e"]]),
                                (1, [["first"], ["a"], ["b"], ["c"], ["d"], ["e"]])):
        recorder = Recorder(hold=1)
        batcher = SearchBatcher(recorder, BatchSettings(window_ms=0, max_batch=max_batch))
        try:
            first, pending = _submit_behind_a_held_call(batcher, recorder, [("k", [q]) for q in "abcde"])
            assert [batcher.wait(p) for p in [first, *pending]] == [[q.upper()] for q in ["first", *"abcde"]]
        finally:
            batcher.close()
        assert [queries for _, queries in recorder.calls] == expected


def test_a_request_larger_than_max_batch_runs_alone() -> None:
    recorder = Recorder()
    batcher = SearchBatcher(recorder, BatchSettings(window_ms=0, max_batch=2))
    try:
        assert batcher.wait(batcher.submit("k", ["a", "b", "c"])) == ["A", "B", "C"]
    finally:
        batcher.close()
    assert recorder.calls == [("k", ["a", "b", "c"])]


def test_the_window_lets_later_requests_join() -> None:
    recorder = Recorder()
    batcher = SearchBatcher(recorder, BatchSettings(window_ms=1000, max_batch=3))
    try:  # the first request waits for its window; the batch is full at three queries and goes at once
        pending = [batcher.submit("k", [q]) for q in "abc"]
        assert [batcher.wait(p) for p in pending] == [["A"], ["B"], ["C"]]
    finally:
        batcher.close()
    assert recorder.calls == [("k", ["a", "b", "c"])]


def test_a_full_queue_refuses_with_retry_after() -> None:
    recorder = Recorder(hold=1)
    batcher = SearchBatcher(recorder, BatchSettings(window_ms=0, max_queue=3))
    try:
        first = batcher.submit("k", ["first"])
        assert recorder.entered.wait(30)
        queued = [batcher.submit("k", ["a", "b"]), batcher.submit("k", ["c"])]
        with pytest.raises(Overloaded, match="at capacity.*3 queries queued, at most 3") as refused:
            batcher.submit("k", ["d"])
        assert refused.value.retry_after_s >= 1
        assert batcher.stats["refused"] == 1
        recorder.release()
        assert [batcher.wait(p) for p in [first, *queued]] == [["FIRST"], ["A", "B"], ["C"]]
        assert batcher.wait(batcher.submit("k", ["d"])) == ["D"]  # room again once the queue drains
    finally:
        batcher.close()


def test_a_request_past_its_timeout_is_answered_and_never_run() -> None:
    recorder = Recorder(hold=1)
    batcher = SearchBatcher(recorder, BatchSettings(window_ms=0, timeout_s=0.2))
    try:
        first = batcher.submit("k", ["first"])
        assert recorder.entered.wait(30)
        late = batcher.submit("k", ["late"])
        with pytest.raises(SearchTimeout, match="timeout of 0.2 s") as waited:
            batcher.wait(late)
        assert waited.value.retry_after_s >= 1
        with pytest.raises(SearchTimeout):
            batcher.wait(first)  # the held call is past its deadline too; its waiter is answered
        recorder.release()
        assert batcher.wait(batcher.submit("k", ["next"])) == ["NEXT"]
    finally:
        batcher.close()
    assert [queries for _, queries in recorder.calls] == [["first"], ["next"]]  # "late" cost no work
    assert batcher.stats["timed_out"] == 2


def test_the_async_path_times_out_without_blocking_the_loop() -> None:
    recorder = Recorder(hold=1)
    batcher = SearchBatcher(recorder, BatchSettings(window_ms=0, timeout_s=0.2))

    async def scenario():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        try:
            with pytest.raises(SearchTimeout):
                await batcher.answer("k", ["held"])
        finally:
            task.cancel()
        return ticks

    try:
        assert asyncio.run(scenario()) > 1  # the loop kept running while the request waited
        recorder.release()
        assert asyncio.run(batcher.answer("k", ["x"])) == ["X"]
    finally:
        recorder.release()
        batcher.close()


def test_a_failing_request_does_not_fail_the_others_of_its_batch() -> None:
    recorder = Recorder(hold=1)
    batcher = SearchBatcher(recorder, BatchSettings(window_ms=0))
    try:
        first, pending = _submit_behind_a_held_call(batcher, recorder, [("k", ["a"]), ("k", ["bad"]), ("k", ["c"])])
        batcher.wait(first)
        assert batcher.wait(pending[0]) == ["A"]
        with pytest.raises(ValueError, match="refused"):
            batcher.wait(pending[1])
        assert batcher.wait(pending[2]) == ["C"]
    finally:
        batcher.close()
    assert [queries for _, queries in recorder.calls] == [["first"], ["a", "bad", "c"], ["a"], ["bad"], ["c"]]


def test_a_batch_function_with_the_wrong_answer_count_is_an_error() -> None:
    batcher = SearchBatcher(lambda key, queries: ["only one"], BatchSettings(window_ms=0))
    try:
        with pytest.raises(RuntimeError, match="1 answers for 2 queries"):
            batcher.wait(batcher.submit("k", ["a", "b"]))
    finally:
        batcher.close()


def test_close_refuses_queued_and_new_requests() -> None:
    recorder = Recorder(hold=1)
    batcher = SearchBatcher(recorder, BatchSettings(window_ms=0))
    first = batcher.submit("k", ["first"])
    assert recorder.entered.wait(30)
    queued = batcher.submit("k", ["a"])
    closer = threading.Thread(target=batcher.close)
    closer.start()
    with pytest.raises(Overloaded, match="shutting down"):
        batcher.wait(queued)
    recorder.release()
    closer.join(30)
    assert not closer.is_alive()
    assert batcher.wait(first) == ["FIRST"]  # the running batch finished
    with pytest.raises(Overloaded, match="shutting down"):
        batcher.submit("k", ["b"])


def test_several_workers_answer_everything() -> None:
    recorder = Recorder()
    batcher = SearchBatcher(recorder, BatchSettings(window_ms=1, max_batch=4, workers=3))
    try:
        results: dict[int, list[str]] = {}

        def client(n: int) -> None:
            results[n] = batcher.wait(batcher.submit(n % 2, [f"q{n}"]))

        threads = [threading.Thread(target=client, args=(n,)) for n in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        batcher.close()
    assert results == {n: [f"Q{n}"] for n in range(40)}
    assert sorted(q for _, queries in recorder.calls for q in queries) == sorted(f"q{n}" for n in range(40))
    assert all(len(queries) <= 4 for _, queries in recorder.calls)
    assert all({int(q[1:]) % 2 for q in queries} == {key} for key, queries in recorder.calls)


@pytest.mark.parametrize("field,value,match", [
    ("max_batch", 0, "max_batch must be an int >= 1"),
    ("max_queue", True, "max_queue must be an int >= 1"),
    ("workers", 1.5, "workers must be an int >= 1"),
    ("window_ms", -1, "window_ms must be between 0 and 1000"),
    ("timeout_s", 0, "timeout_s must be a positive number"),
    ("timeout_s", float("inf"), "timeout_s must be a positive number"),
])
def test_bad_settings_are_refused(field, value, match) -> None:
    with pytest.raises(ValueError, match=match):
        BatchSettings(**{field: value})
