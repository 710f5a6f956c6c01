"""The service under concurrent load: micro-batched answers equal one-by-one searches, a full queue and a request
past its timeout are answered 503 with Retry-After, and /health answers while every search waits.

A live uvicorn server over the tiny service index; the served Retriever's ``search`` is wrapped so that the first
call is held at a gate until the test has queued what it needs (so the order is decided, not timed).
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from helpers import load_with_localizer, serve_in_thread
from prvr.services.app import ServiceSettings, create_app
from prvr.services.batcher import BatchSettings
from prvr.services.schemas import ErrorResponse

TEXTS = ["a dog kicks a ball", "the man runs", "a cat plays", "the dog jumps over a fence", "someone cooks",
         "a child laughs", "two people dance", "the car stops", "a bird sings", "the woman reads", "rain falls",
         "a boy swims"]


class HeldSearch:
    """A loader whose Retriever holds its first ``search`` call at a gate and records the size of every call."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls: list[int] = []

    def __call__(self, index_dir):
        retriever = load_with_localizer(index_dir)
        search = retriever.search

        def held(query, *args, **kwargs):
            self.calls.append(1 if isinstance(query, str) else len(query))
            if len(self.calls) == 1:
                self.entered.set()
                assert self.gate.wait(60), "the test never opened the gate"
            return search(query, *args, **kwargs)

        retriever.search = held
        return retriever


def _queued(app, n: int) -> None:
    deadline = time.monotonic() + 30
    while app.state.batcher.queued < n:
        assert time.monotonic() < deadline, f"{app.state.batcher.queued} of {n} queries queued"
        time.sleep(0.005)


def _get_in_threads(base: str, texts: list[str], k: int = 5) -> tuple[list[threading.Thread], dict[str, httpx.Response]]:
    answers: dict[str, httpx.Response] = {}

    def get(text: str) -> None:
        answers[text] = httpx.get(f"{base}/search", params={"q": text, "k": k}, timeout=60)

    threads = [threading.Thread(target=get, args=(text,)) for text in texts]
    for thread in threads:
        thread.start()
    return threads, answers


def _held_then_queued(base: str, app, held: HeldSearch, texts: list[str]) -> dict[str, httpx.Response]:
    """texts[0] enters the search and is held; the others queue behind it; then the gate opens. All answers."""
    first, answers = _get_in_threads(base, texts[:1])
    assert held.entered.wait(30)
    rest, more = _get_in_threads(base, texts[1:])
    _queued(app, len(texts) - 1)
    held.gate.set()
    for thread in first + rest:
        thread.join(60)
    return {**answers, **more}


def _error(response: httpx.Response, code: str) -> str:
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) >= 1
    body = ErrorResponse.model_validate(response.json())
    assert body.error.code == code
    return body.error.message


def test_micro_batched_answers_equal_one_by_one_searches(service_index) -> None:
    held = HeldSearch()
    app = create_app(ServiceSettings(index_dir=service_index["dir"], poll_interval_s=0,
                                     batching=BatchSettings(window_ms=0, max_batch=64)), loader=held)
    with serve_in_thread(app) as base:
        answers = _held_then_queued(base, app, held, TEXTS)
    assert held.calls == [1, len(TEXTS) - 1]  # the eleven waiting requests went as one search
    with load_with_localizer(service_index["dir"]) as retriever:
        for text in TEXTS:
            assert answers[text].status_code == 200, answers[text].text
            hits = answers[text].json()["results"]
            alone = retriever.search(text, 5)
            assert [hit["video_id"] for hit in hits] == [result.video_id for result in alone]
            for hit, result in zip(hits, alone):
                assert hit["score"] == pytest.approx(result.score, abs=1e-5)
                assert [x for m in hit["moments"] for x in (m["start_sec"], m["end_sec"])] == pytest.approx(
                    [x for m in result.moments for x in (m.start_sec, m.end_sec)], abs=1e-4)


def test_a_full_queue_is_a_503_with_retry_after_and_health_still_answers(service_index) -> None:
    held = HeldSearch()
    app = create_app(ServiceSettings(index_dir=service_index["dir"], poll_interval_s=0, max_request_queries=4,
                                     batching=BatchSettings(window_ms=0, max_queue=4)), loader=held)
    with serve_in_thread(app) as base:
        first, answers = _get_in_threads(base, TEXTS[:1])
        assert held.entered.wait(30)
        queued, more = _get_in_threads(base, TEXTS[1:5])
        _queued(app, 4)
        message = _error(httpx.get(f"{base}/search", params={"q": "one too many"}, timeout=30), "overloaded")
        assert "4 queries queued, at most 4" in message
        batch = httpx.post(f"{base}/search", json={"queries": ["x", "y"]}, timeout=30)
        _error(batch, "overloaded")
        health = httpx.get(f"{base}/health", timeout=30)  # async: no thread-pool slot or search needed
        assert health.status_code == 200 and health.json()["queued_queries"] == 4
        held.gate.set()
        for thread in first + queued:
            thread.join(60)
        answers.update(more)
        assert all(answers[text].status_code == 200 for text in TEXTS[:5])
        assert httpx.get(f"{base}/search", params={"q": "one too many"}, timeout=30).status_code == 200
    assert app.state.batcher.stats["refused"] == 2


def test_a_request_past_its_timeout_is_a_503_and_the_service_recovers(service_index) -> None:
    held = HeldSearch()
    app = create_app(ServiceSettings(index_dir=service_index["dir"], poll_interval_s=0,
                                     batching=BatchSettings(window_ms=0, timeout_s=0.5)), loader=held)
    with serve_in_thread(app) as base:
        message = _error(httpx.get(f"{base}/search", params={"q": TEXTS[0]}, timeout=30), "timeout")
        assert "0.5 s" in message
        queued = httpx.get(f"{base}/search", params={"q": TEXTS[1]}, timeout=30)  # waits behind the held call
        _error(queued, "timeout")
        held.gate.set()
        deadline = time.monotonic() + 30
        while app.state.batcher.queued or len(held.calls) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        ok = httpx.get(f"{base}/search", params={"q": TEXTS[2]}, timeout=30)
        assert ok.status_code == 200, ok.text
    assert app.state.batcher.stats["timed_out"] >= 2
    assert len(held.calls) == 2  # the expired request never reached the Retriever


def test_no_batching_searches_each_request_alone(service_index) -> None:
    held = HeldSearch()
    app = create_app(ServiceSettings(index_dir=service_index["dir"], poll_interval_s=0,
                                     batching=BatchSettings(window_ms=0, max_batch=1)), loader=held)
    with serve_in_thread(app) as base:
        answers = _held_then_queued(base, app, held, TEXTS[:4])
    assert held.calls == [1, 1, 1, 1]
    assert all(answers[text].status_code == 200 for text in TEXTS[:4])


def test_settings_refuse_a_request_size_the_queue_cannot_hold(service_index) -> None:
    with pytest.raises(ValueError, match="exceeds the queue bound 8"):
        ServiceSettings(index_dir=service_index["dir"], max_request_queries=16, batching=BatchSettings(max_queue=8))


def test_the_load_run_of_the_benchmark_counts_answers_and_renders(service_index) -> None:
    from prvr.benchmarks.service_bench import load_run, markdown, summarize_level

    app = create_app(ServiceSettings(index_dir=service_index["dir"], poll_interval_s=0), loader=load_with_localizer)
    with serve_in_thread(app) as base:
        run = load_run(base, TEXTS, clients=3, requests=9, max_seconds=60, k=3, moments=True, relevance=False,
                       offset=0, health_interval_s=0.01)
    assert run["requests"] == 9 and run["errors"] == 0 and run["refused_503"] == 0, run
    assert run["p50_ms"] <= run["p99_ms"] <= run["max_wait_ms"] + 1e-6
    level = summarize_level(3, [run, run])
    assert level["requests"] == 18 and level["max_wait_ms"] == run["max_wait_ms"]
    setup = {"index": "i", "num_videos": 12, "collection": "c", "split": "val", "faiss": "Flat", "k": 3,
             "moments": True, "has_moment_model": False, "relevance": False, "omp_threads": "1", "requests": 9,
             "max_seconds": 60, "repeats": 2, "machine": "m", "load_average_before": 0.1, "checkpoint_sha256": "ab" * 32}
    slower = {**level, "throughput_qps": level["throughput_qps"] / 2}
    page = markdown({"command": "python scripts/bench_service.py", "setup": setup,
                     "modes": [{"name": "batched", "server_args": [], "levels": [level]},
                               {"name": "unbatched", "server_args": ["--no-batching"], "levels": [slower]}]})
    assert "## unbatched: `prvr serve --no-batching`" in page
    assert "Throughput of batched over unbatched (same run): 3 clients 2.00x." in page


def test_a_hot_swap_under_load_answers_each_request_from_one_generation(service_index, synthetic_corpus,
                                                                        tmp_path) -> None:
    import shutil

    from prvr.index.builder import build_index

    index_dir = tmp_path / "index"
    shutil.copytree(service_index["dir"], index_dir)
    queries = TEXTS[:6]
    app = create_app(ServiceSettings(index_dir=index_dir, poll_interval_s=0,
                                     batching=BatchSettings(window_ms=5, max_batch=16)), loader=load_with_localizer)
    expected: dict[int, dict[str, list[str]]] = {}

    def answers_of_the_served_generation() -> None:
        with load_with_localizer(index_dir) as retriever:
            expected[retriever.generation_id] = {
                text: [result.video_id for result in retriever.search(text, 16)] for text in queries}

    answers_of_the_served_generation()
    seen: list[tuple[int, dict[str, list[str]]]] = []
    failures: list[str] = []
    stop = threading.Event()
    with serve_in_thread(app) as base:

        def client(offset: int) -> None:
            with httpx.Client(base_url=base, timeout=60) as session:
                while not stop.is_set():
                    batch = [queries[(offset + i) % len(queries)] for i in range(3)]
                    response = session.post("/search", json={"queries": batch, "k": 16, "moments": False})
                    if response.status_code != 200:
                        failures.append(response.text)
                        continue
                    body = response.json()
                    if {r["generation"] for r in body["responses"]} != {body["generation"]}:
                        failures.append(f"one request answered from several generations: {body}")
                    seen.append((body["generation"], {r["query"]: [h["video_id"] for h in r["results"]]
                                                      for r in body["responses"]}))

        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        while len(seen) < 8:
            time.sleep(0.01)
        models = index_dir / "models"
        build_index(models / next(models.iterdir()).name, synthetic_corpus.split("test"), index_dir,
                    collection_name="synth", progress=False)
        assert app.state.holder.refresh() is True
        answers_of_the_served_generation()
        swapped_at = len(seen)
        while len(seen) < swapped_at + 8:
            time.sleep(0.01)
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not failures, failures[:3]
    assert len(expected) == 2 and {generation for generation, _ in seen} == set(expected)
    for generation, rankings in seen:
        for text, ranking in rankings.items():
            assert ranking == expected[generation][text], (generation, text)


def test_serve_fits_the_request_size_to_a_small_queue(service_index, monkeypatch) -> None:
    import uvicorn
    from click.testing import CliRunner

    from prvr.cli import main

    seen = {}

    def fake_create_app(settings, **_):
        seen["settings"] = settings
        return object()

    monkeypatch.setattr("prvr.services.app.create_app", fake_create_app)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: None)
    for args, request_queries in ((["--max-queue", "16"], 16), ([], 32), (["--max-request-queries", "8"], 8)):
        result = CliRunner().invoke(main, ["serve", "--index", str(service_index["dir"]), "--no-batching", *args])
        assert result.exit_code == 0, result.output
        assert seen["settings"].max_request_queries == request_queries
        assert seen["settings"].batching.max_batch == 1
    result = CliRunner().invoke(main, ["serve", "--index", str(service_index["dir"]), "--max-queue", "4",
                                       "--max-request-queries", "8"])
    assert result.exit_code == 1 and "exceeds the queue bound 4" in result.output, result.output
