"""The search service: API status codes and schemas, bad input, API key, media ranges, generation swap, a live server.

A tiny random DreamPRVR and a tiny random BERT (the query text encoder recorded in the index) over a synthetic
corpus; moments come from a small deterministic test localiser passed to ``Retriever.load`` (the service only has to
carry what the localiser says, whatever it is).
"""

from __future__ import annotations

import http.client
import shutil
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from helpers import MEDIA_BYTES, load_with_localizer, serve_in_thread
from prvr.cli import main
from prvr.index.builder import build_index
from prvr.index.layout import DB_NAME
from prvr.retriever import Retriever
from prvr.services import media
from prvr.services.app import ServiceSettings, check_bind, create_app
from prvr.index.catalog import open_database
from prvr.services.schemas import (
    BatchSearchResponse,
    ErrorResponse,
    Health,
    SearchResponse,
    VideoInfo,
)

API_KEY = "test-key-0123456789"


@pytest.fixture(scope="module")
def client(service_index):
    app = create_app(ServiceSettings(index_dir=service_index["dir"], poll_interval_s=0), loader=load_with_localizer)
    with TestClient(app) as test_client:
        yield test_client


def _error(response, status: int, code: str, match: str = "") -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = ErrorResponse.model_validate(response.json())
    assert body.error.code == code
    assert match.lower() in body.error.message.lower(), body.error.message
    return body.error.message


# ------------------------------------------------------------------------------------------------ happy paths


def test_health_and_openapi(client, service_index) -> None:
    health = Health.model_validate(client.get("/health").json())
    assert health.status == "ok" and health.num_videos == 12 and health.generation_directory.startswith("gen-")
    schema = client.get("/openapi.json").json()
    assert {"/health", "/search", "/videos/{video_id}", "/videos/{video_id}/media"} <= set(schema["paths"])
    assert "post" in schema["paths"]["/search"] and "ErrorResponse" in schema["components"]["schemas"]


def test_search_get_returns_ranked_hits_with_moments(client, service_index, synthetic_corpus) -> None:
    response = client.get("/search", params={"q": "a dog kicks a ball", "k": 5})
    assert response.status_code == 200, response.text
    body = SearchResponse.model_validate(response.json())
    assert body.query == "a dog kicks a ball" and body.k == 5 and len(body.results) == 5
    assert [hit.rank for hit in body.results] == [1, 2, 3, 4, 5]
    scores = [hit.score for hit in body.results]
    assert scores == sorted(scores, reverse=True)
    assert {hit.video_id for hit in body.results} <= set(synthetic_corpus.val.video_ids)
    for hit in body.results:
        assert hit.duration is not None and hit.duration > 0
        assert hit.relevance is None and 1 <= len(hit.moments) <= 2
        for moment in hit.moments:
            assert 0 <= moment.start_sec < moment.end_sec <= hit.duration + 1e-6 and 0 <= moment.score <= 1
    # the same ranking as the library
    with load_with_localizer(service_index["dir"]) as retriever:
        expected = retriever.search("a dog kicks a ball", k=5)
    assert [hit.video_id for hit in body.results] == [r.video_id for r in expected]
    assert scores == pytest.approx([r.score for r in expected], abs=1e-6)
    got = [x for m in body.results[0].moments for x in (m.start_sec, m.end_sec, m.score)]
    assert got == pytest.approx([x for m in expected[0].moments for x in (m.start_sec, m.end_sec, m.score)], abs=1e-6)


def test_search_relevance_and_no_moments(client, service_index) -> None:
    body = client.get("/search", params={"q": "the cat jumps", "k": 3, "relevance": "true"}).json()
    for hit in body["results"]:
        assert len(hit["relevance"]) >= 20 and all(0 <= x <= 1 for x in hit["relevance"])
    plain = client.get("/search", params={"q": "the cat jumps", "k": 3, "moments": "false"}).json()
    assert all(hit["moments"] == [] and hit["relevance"] is None for hit in plain["results"])
    assert [h["video_id"] for h in plain["results"]] == [h["video_id"] for h in body["results"]]


def test_batched_post_matches_get(client) -> None:
    texts = ["a dog kicks a ball", "the man runs over the fence"]
    response = client.post("/search", json={"queries": texts, "k": 4})
    assert response.status_code == 200, response.text
    body = BatchSearchResponse.model_validate(response.json())
    assert [r.query for r in body.responses] == texts and all(len(r.results) == 4 for r in body.responses)
    for text, answer in zip(texts, body.responses):
        single = client.get("/search", params={"q": text, "k": 4}).json()
        assert [h["video_id"] for h in single["results"]] == [h.video_id for h in answer.results]
        assert [h["score"] for h in single["results"]] == pytest.approx([h.score for h in answer.results], abs=1e-5)


def test_page_and_static_files(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="search-form"' in page.text and "/static/app.js" in page.text
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "buildTimeline" in script.text
    assert client.get("/static/style.css").status_code == 200


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"q": ""}, "empty"),
        ({"q": "    "}, "empty"),
        ({}, "q: field required"),
        ({"q": "a" * 40_000}, "40000 characters long; at most 512"),
        ({"q": "a dog", "k": 0}, "k must be between 1 and 100"),
        ({"q": "a dog", "k": -3}, "k must be between 1 and 100"),
        ({"q": "a dog", "k": 10**6}, "k must be between 1 and 100"),
        ({"q": "a dog", "k": "ten"}, "k: input should be a valid integer"),
        ({"q": "a dog", "relevance": "maybe"}, "relevance"),
    ],
)
def test_search_bad_input_is_a_clear_json_422(client, params, match) -> None:
    _error(client.get("/search", params=params), 422, "invalid_request", match)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({"queries": []}, "no queries"),
        ({"queries": ["a dog"] * 33}, "at most 32"),
        ({"queries": ["x" * 1000]}, "1000 characters long; at most 512"),
        ({"queries": ["a dog", ""]}, "queries[1] is empty"),
        ({"queries": ["a dog"], "k": 0}, "k must be between"),
        ({"queries": "a dog"}, "queries: input should be a valid list"),
        ({"queries": ["a dog"], "limit": 3}, "extra inputs are not permitted"),
        ({"queries": [3]}, "valid string"),
    ],
)
def test_batch_bad_input(client, body, match) -> None:
    _error(client.post("/search", json=body), 422, "invalid_request", match)


def test_oversized_bodies_are_refused_before_parsing(client) -> None:
    huge = b'{"queries": ["' + b"a" * 200_000 + b'"]}'
    response = client.post("/search", content=huge, headers={"content-type": "application/json"})
    _error(response, 413, "too_large", "request body over")

    def chunks():
        for _ in range(100):
            yield b"a" * 10_000

    response = client.post("/search", content=chunks(), headers={"content-type": "application/json"})
    _error(response, 413, "too_large", "request body over")
    _error(client.post("/search", json={"queries": ["x" * 10**6]}), 413, "too_large")
    small = client.post("/search", content=iter([b'{"queries": ', b'["a dog"], "k": 2}']),
                        headers={"content-type": "application/json"})  # chunked and small: served
    assert small.status_code == 200 and len(small.json()["responses"][0]["results"]) == 2


def test_malformed_json_body_and_unknown_routes(client) -> None:
    response = client.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    _error(response, 422, "invalid_request", "json")
    _error(client.get("/nothing/here"), 404, "not_found", "no such endpoint")
    _error(client.delete("/search"), 405, "method_not_allowed")


# ------------------------------------------------------------------------------------------------ videos and media


def test_video_metadata(client, service_index) -> None:
    vid = service_index["with_media"]
    info = VideoInfo.model_validate(client.get(f"/videos/{vid}").json())
    assert info.video_id == vid and info.status == "indexed" and info.duration and info.duration > 0
    assert info.media_url == f"/videos/{vid}/media"
    gone = client.get(f"/videos/{service_index['missing_media']}").json()
    assert gone["media_url"] is None
    _error(client.get("/videos/no-such-video"), 404, "not_found", "not in the served index")
    _error(client.get("/videos/outsider"), 404, "not_found", "not in the served index")  # registered, not indexed


def test_search_hits_carry_media_urls_only_for_local_files(client, service_index) -> None:
    body = client.get("/search", params={"q": "a dog", "k": 12}).json()
    urls = {hit["video_id"]: hit["media_url"] for hit in body["results"]}
    assert urls[service_index["with_media"]] == f"/videos/{service_index['with_media']}/media"
    assert all(url is None for vid, url in urls.items() if vid != service_index["with_media"])


def test_media_full_and_ranges(client, service_index) -> None:
    url = f"/videos/{service_index['with_media']}/media"
    size = len(MEDIA_BYTES)
    full = client.get(url)
    assert full.status_code == 200 and full.content == MEDIA_BYTES
    assert full.headers["accept-ranges"] == "bytes" and full.headers["content-type"] == "video/mp4"
    assert int(full.headers["content-length"]) == size
    cases = {"bytes=0-9": (0, 9), "bytes=100-": (100, size - 1), "bytes=-16": (size - 16, size - 1),
             f"bytes=10-{size + 500}": (10, size - 1), f"bytes={size - 1}-{size - 1}": (size - 1, size - 1)}
    for header, (first, last) in cases.items():
        part = client.get(url, headers={"Range": header})
        assert part.status_code == 206, header
        assert part.content == MEDIA_BYTES[first : last + 1], header
        assert part.headers["content-range"] == f"bytes {first}-{last}/{size}"
        assert int(part.headers["content-length"]) == last - first + 1
    for header in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=-0"):
        response = client.get(url, headers={"Range": header})
        _error(response, 416, "range_not_satisfiable", "beyond the end")
        assert response.headers["content-range"] == f"bytes */{size}"
    for header in ("bytes=9-2", "lines=0-3", "bytes=0-1,5-9", "bytes=abc"):  # ignored: the whole file
        response = client.get(url, headers={"Range": header})
        assert response.status_code == 200 and response.content == MEDIA_BYTES, header


def test_media_only_for_registered_local_files(client, service_index) -> None:
    _error(client.get(f"/videos/{service_index['missing_media']}/media"), 404, "not_found", "no local media")
    _error(client.get("/videos/outsider/media"), 404, "not_found", "not in the served index")
    _error(client.get("/videos/unknown/media"), 404, "not_found")
    for path in ("/videos/%2e%2e/media", "/videos/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd/media", "/videos/..%2Fclip.mp4/media",
                 "/videos/..%5c..%5cetc%5cpasswd/media", "/videos/%00/media"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.content != MEDIA_BYTES and b"root:" not in response.content


def test_local_media_path(tmp_path) -> None:
    target = tmp_path / "v.webm"
    target.write_bytes(b"x")
    assert media.local_media_path(str(target), tmp_path) == target.resolve()
    assert media.local_media_path(target.as_uri(), tmp_path) == target.resolve()
    assert media.local_media_path("v.webm", tmp_path) == target.resolve()  # relative to the index directory
    assert media.local_media_path("https://example.com/v.webm", tmp_path) is None
    assert media.local_media_path("file://otherhost/v.webm", tmp_path) is None
    assert media.local_media_path(str(tmp_path), tmp_path) is None  # a directory
    assert media.local_media_path(None, tmp_path) is None and media.local_media_path("", tmp_path) is None
    assert media.media_type(target) == "video/webm"


def test_parse_range_reference() -> None:
    """Against a slow reference: the bytes a range selects, by enumerating every byte of a small file."""
    size = 7
    for first in range(10):
        for last in range(10):
            header = f"bytes={first}-{last}"
            wanted = [b for b in range(size) if first <= b <= last]
            if last < first:
                assert media.parse_range(header, size) is None
            elif not wanted:
                with pytest.raises(media.RangeNotSatisfiable):
                    media.parse_range(header, size)
            else:
                assert media.parse_range(header, size) == (wanted[0], wanted[-1])
    for suffix in range(1, 10):
        wanted = list(range(size))[-suffix:]
        assert media.parse_range(f"bytes=-{suffix}", size) == (wanted[0], wanted[-1])
    assert media.parse_range(None, size) is None and media.parse_range("bytes=-", size) is None


# ------------------------------------------------------------------------------------------------ API key


def test_api_key(service_index) -> None:
    settings = ServiceSettings(index_dir=service_index["dir"], api_key=API_KEY, poll_interval_s=0)
    with TestClient(create_app(settings, loader=load_with_localizer)) as client:
        _error(client.get("/search", params={"q": "a dog"}), 401, "unauthorized", "X-API-Key")
        _error(client.get("/search", params={"q": "a dog"}, headers={"X-API-Key": "wrong-key-123"}), 401,
               "unauthorized")
        _error(client.post("/search", json={"queries": ["a dog"]}), 401, "unauthorized")
        _error(client.get(f"/videos/{service_index['with_media']}"), 401, "unauthorized")
        _error(client.get(f"/videos/{service_index['with_media']}/media"), 401, "unauthorized")
        assert client.get("/health").status_code == 200 and client.get("/").status_code == 200
        headers = {"X-API-Key": API_KEY}
        body = client.get("/search", params={"q": "a dog", "k": 12}, headers=headers).json()
        media_url = next(hit["media_url"] for hit in body["results"] if hit["video_id"] == service_index["with_media"])
        assert "token=" in media_url and API_KEY not in media_url
        assert client.get(media_url).content == MEDIA_BYTES  # a <video> element sends no header: the token does
        assert client.get(f"/videos/{service_index['with_media']}/media", headers=headers).content == MEDIA_BYTES
        forged = media_url[:-4] + ("0000" if not media_url.endswith("0000") else "1111")
        _error(client.get(forged), 401, "unauthorized")
        other = service_index["missing_media"]
        _error(client.get(f"/videos/{other}/media?{media_url.split('?')[1]}"), 401, "unauthorized")  # other video
    token = media.sign_media(API_KEY, "v1", ttl_s=10, now=1000.0)
    assert media.verify_media_token(API_KEY, "v1", token, now=1005.0)
    assert not media.verify_media_token(API_KEY, "v1", token, now=1011.0)  # expired
    assert not media.verify_media_token("another-key-123", "v1", token, now=1005.0)


def test_bind_rules_and_settings() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, None)
    for host in ("0.0.0.0", "192.168.1.4", "::", "example.com"):
        with pytest.raises(ValueError, match="refusing to bind"):
            check_bind(host, None)
        check_bind(host, API_KEY)
    with pytest.raises(ValueError, match="at least 8"):
        ServiceSettings(index_dir=Path("x"), api_key="short")
    with pytest.raises(ValueError, match="max_k"):
        ServiceSettings(index_dir=Path("x"), max_k=0)


def test_serve_cli_refuses_unsafe_setups(service_index, synthetic_corpus, monkeypatch) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["serve", "--index", str(service_index["dir"]), "--host", "0.0.0.0"])
    assert result.exit_code == 1 and "refusing to bind 0.0.0.0" in result.output, result.output
    monkeypatch.delenv("PRVR_TEST_KEY", raising=False)
    result = runner.invoke(main, ["serve", "--index", str(service_index["dir"]), "--api-key-env", "PRVR_TEST_KEY"])
    assert result.exit_code == 1 and "PRVR_TEST_KEY is unset" in result.output
    result = runner.invoke(main, ["serve", "--index", str(synthetic_corpus.root)])
    assert result.exit_code == 1 and "not an index directory" in result.output


# ------------------------------------------------------------------------------------------------ query log


def test_query_log_off_by_default_and_on_when_asked(service_index, copy_index) -> None:
    index_dir = copy_index(service_index["dir"])  # the query log writes to the catalog

    def logged() -> list[str]:
        from sqlalchemy import select

        from prvr.index.catalog import QueryLog

        with open_database(index_dir / DB_NAME) as db, db.session(readonly=True) as session:
            return list(session.scalars(select(QueryLog.query_text).order_by(QueryLog.id.desc())))

    before = logged()
    with TestClient(create_app(ServiceSettings(index_dir=index_dir, poll_interval_s=0),
                               loader=load_with_localizer)) as client:
        assert client.get("/search", params={"q": "the dog plays"}).status_code == 200
    assert logged() == before
    with TestClient(create_app(ServiceSettings(index_dir=index_dir, poll_interval_s=0, query_log=True),
                               loader=load_with_localizer)) as client:
        assert client.get("/search", params={"q": "a cat jumps", "k": 3}).status_code == 200
        assert client.post("/search", json={"queries": ["one dog", "two cats"]}).status_code == 200
    assert logged()[:3] == ["two cats", "one dog", "a cat jumps"]


def test_request_log_lines(client, caplog) -> None:
    with caplog.at_level("INFO", logger="prvr.services.app"):
        client.get("/search", params={"q": "secret words", "k": 2})
        client.get("/videos/none")
    lines = [record.getMessage() for record in caplog.records if record.name == "prvr.services.app"]
    assert any(line.startswith("GET /search 200 ") and line.endswith("ms") for line in lines)
    assert any(line.startswith("GET /videos/none 404 ") for line in lines)
    assert not any("secret" in line for line in lines)  # the query string is never logged


# ------------------------------------------------------------------------------------------------ generation swap


def test_new_generation_is_picked_up_without_restart(service_index, synthetic_corpus, tmp_path) -> None:
    index_dir = tmp_path / "index"
    shutil.copytree(service_index["dir"], index_dir)
    closed: list[int] = []

    def loader(path: Path) -> Retriever:
        retriever = load_with_localizer(path)
        original = retriever.close
        retriever.close = lambda: (closed.append(retriever.generation_id), original())  # type: ignore[method-assign]
        return retriever

    app = create_app(ServiceSettings(index_dir=index_dir, poll_interval_s=0), loader=loader)
    holder = app.state.holder
    with TestClient(app) as client:
        first = client.get("/health").json()
        assert holder.refresh() is False  # nothing new yet
        extra = synthetic_corpus.split("test")
        lease = holder.lease()
        old = lease.__enter__()  # a request still running on the old generation
        build_index(index_dir / "models" / next((index_dir / "models").iterdir()).name, extra, index_dir,
                    collection_name="synth", progress=False)
        assert holder.refresh() is True
        second = client.get("/health").json()
        assert second["generation"] != first["generation"] and second["num_videos"] == 16
        assert closed == []  # the old one is still in use
        assert old.search("a dog", k=2)  # and still works
        lease.__exit__(None, None, None)
        assert closed == [first["generation"]]
        body = client.get("/search", params={"q": "a dog kicks", "k": 16}).json()
        assert body["generation"] == second["generation"] and len(body["results"]) == 16
        assert set(extra.video_ids) <= {hit["video_id"] for hit in body["results"]}
    assert sorted(closed) == sorted([first["generation"], second["generation"]])


def test_failed_reload_keeps_serving_the_old_generation(service_index, synthetic_corpus, tiny_checkpoint,
                                                         tmp_path) -> None:
    index_dir = tmp_path / "index"
    shutil.copytree(service_index["dir"], index_dir)
    loads: list[Path] = []

    def loader(path: Path) -> Retriever:
        loads.append(path)
        if len(loads) > 1:
            raise RuntimeError("cannot map the new FAISS files")
        return load_with_localizer(path)

    app = create_app(ServiceSettings(index_dir=index_dir, poll_interval_s=0), loader=loader)
    with TestClient(app) as client:
        before = client.get("/health").json()
        extra = synthetic_corpus.split("test")
        build_index(tiny_checkpoint, extra, index_dir, collection_name="synth", progress=False)
        with pytest.raises(RuntimeError, match="cannot map"):
            app.state.holder.refresh()  # the poller logs this and retries at its next tick
        assert client.get("/health").json() == before
        body = client.get("/search", params={"q": "a dog", "k": 3}).json()
        assert body["generation"] == before["generation"] and len(body["results"]) == 3


def test_poller_swaps_in_the_background(service_index, synthetic_corpus, tiny_checkpoint, tmp_path) -> None:
    index_dir = tmp_path / "index"
    shutil.copytree(service_index["dir"], index_dir)
    app = create_app(ServiceSettings(index_dir=index_dir, poll_interval_s=0.05), loader=load_with_localizer)
    with TestClient(app) as client:
        before = client.get("/health").json()["generation"]
        extra = synthetic_corpus.split("test")
        build_index(tiny_checkpoint, extra, index_dir, collection_name="synth", progress=False)
        deadline = time.monotonic() + 20
        while client.get("/health").json()["generation"] == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/health").json()["num_videos"] == 16


# ------------------------------------------------------------------------------------------------ a live server


def test_live_server_concurrent_searches(service_index) -> None:
    import httpx

    app = create_app(ServiceSettings(index_dir=service_index["dir"], poll_interval_s=0), loader=load_with_localizer)
    with serve_in_thread(app) as base:
        texts = ["a dog kicks a ball", "the man runs", "a cat plays", "the dog jumps over a fence"]
        expected = {}
        for text in texts:
            answer = httpx.get(f"{base}/search", params={"q": text, "k": 4}).json()
            expected[text] = [hit["video_id"] for hit in answer["results"]]
        failures: list[str] = []
        done: list[int] = []

        def worker(offset: int) -> None:
            try:
                with httpx.Client(base_url=base, timeout=30) as session:
                    for round_ in range(3):
                        text = texts[(offset + round_) % len(texts)]
                        response = session.get("/search", params={"q": text, "k": 4})
                        if response.status_code != 200:
                            failures.append(f"{response.status_code} {response.text}")
                        elif [h["video_id"] for h in response.json()["results"]] != expected[text]:
                            failures.append(f"different ranking for {text!r}")
                        else:
                            done.append(1)
            except (httpx.HTTPError, ValueError, KeyError) as error:  # surfaced below
                failures.append(repr(error))

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures, failures
        assert len(done) == 18
        # raw request lines: no client-side normalisation of "../"
        host, port = base.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        for path in ("/videos/../../../../etc/passwd/media", "/static/../../../../etc/passwd", "/static/%2e%2e/app.py",
                     "/static/..%2fapp.py"):
            connection.request("GET", path)
            response = connection.getresponse()
            payload = response.read()
            assert response.status == 404, path
            assert b"root:" not in payload and b"create_app" not in payload
        connection.close()
