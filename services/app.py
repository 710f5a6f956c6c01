"""The search service: a FastAPI app over one index directory (HTTP API, the web page, and video streaming).

``create_app(ServiceSettings(index_dir=...))`` loads the active index generation once; request threads share it
(FastAPI runs the plain ``def`` endpoints in a thread pool and ``Retriever.search`` is thread-safe). A poller thread
watches the database's active generation (one small SELECT per interval) and, when a build commits a new one, loads
it and swaps it in under a lock; the old Retriever is closed once the last request using it has finished.

Safe by default: ``prvr serve`` binds 127.0.0.1 and refuses any other host without an API key (:func:`check_bind`);
with a key every data endpoint needs the ``X-API-Key`` header (media links carry a short-lived signed token instead,
since a ``<video>`` element cannot send headers); query length, batch size and k are bounded; errors are JSON
(:class:`services.schemas.ErrorResponse`); only files registered as a video's uri in the index are streamed.

Under load: searches go through one bounded queue (:mod:`prvr.services.batcher`) whose workers join concurrent
requests into one ``Retriever.search`` of many queries (micro-batching); a full queue or a request past its timeout
is answered 503 with ``Retry-After``. The search endpoints and ``/health`` are ``async``, so they never wait for the
thread pool: ``/health`` answers at once however many searches are queued.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import threading
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    Iterator,
    MutableMapping,
    Sequence,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from sqlalchemy import select
from starlette.exceptions import HTTPException as StarletteHTTPException

from prvr.index.layout import open_index_database
from prvr.retriever import Retriever, SearchResult
from prvr.query_text import MAX_QUERY_CHARS, QueryTextError, clean_query
from prvr.services import media
from prvr.services.batcher import BatchSettings, Overloaded, SearchBatcher, SearchTimeout
from prvr.index.catalog import Database, GenerationVideo, Video, VideoStatus
from prvr.services.schemas import (
    BatchSearchRequest,
    BatchSearchResponse,
    ErrorResponse,
    Health,
    MomentOut,
    SearchHit,
    SearchResponse,
    VideoInfo,
)

__all__ = ["IndexHolder", "ServiceError", "ServiceSettings", "check_bind", "create_app"]

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
API_KEY_HEADER = "X-API-Key"
RELEVANCE_DIGITS = 4

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class ServiceSettings:
    """How the service runs.

    Attributes:
        index_dir: the index directory written by ``prvr build-index``.
        api_key: when set, every data endpoint needs it in the ``X-API-Key`` header.
        max_query_chars: longest accepted query (characters, after cleaning; at most prvr.query_text.MAX_QUERY_CHARS).
        max_k: most results per query.
        max_request_queries: most queries in one ``POST /search``.
        poll_interval_s: how often the poller checks the active generation (0 disables the poller).
        query_log: record every query in the database's ``query_log`` table (off by default: privacy).
        media_token_ttl_s: lifetime of the signed media links handed out when an API key is set.
        batching: the search queue's bounds and micro-batching (:class:`prvr.services.batcher.BatchSettings`).
    """

    index_dir: Path
    api_key: str | None = None
    max_query_chars: int = 512
    max_k: int = 100
    max_request_queries: int = 32
    poll_interval_s: float = 2.0
    query_log: bool = False
    media_token_ttl_s: int = 3600
    batching: BatchSettings = BatchSettings()

    def __post_init__(self) -> None:
        object.__setattr__(self, "index_dir", Path(self.index_dir))
        for name in ("max_query_chars", "max_k", "max_request_queries", "media_token_ttl_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.max_query_chars > MAX_QUERY_CHARS:
            raise ValueError(f"max_query_chars {self.max_query_chars} exceeds the search's own limit of "
                             f"{MAX_QUERY_CHARS} characters (prvr.query_text.MAX_QUERY_CHARS); pick at most that")
        if self.poll_interval_s < 0:
            raise ValueError(f"poll_interval_s must be >= 0 (0 disables polling), got {self.poll_interval_s!r}")
        if self.api_key is not None and len(self.api_key) < 8:
            raise ValueError("the API key must be at least 8 characters long; generate one with "
                             "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
        if self.max_request_queries > self.batching.max_queue:
            raise ValueError(f"max_request_queries {self.max_request_queries} exceeds the queue bound "
                             f"{self.batching.max_queue}: such a request could never be queued; raise the queue bound "
                             "or lower max_request_queries")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the service on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to expose the service beyond this machine without an API key.

    Raises:
        ValueError: for a non-loopback host (e.g. 0.0.0.0) without a key.
    """
    if not is_loopback(host) and not api_key:
        raise ValueError(
            f"refusing to bind {host}: anyone on the network could query the index; set an API key (export "
            "PRVR_API_KEY=... and pass --api-key-env PRVR_API_KEY) or bind 127.0.0.1"
        )


class ServiceError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def _error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse.model_validate({"error": {"code": code, "message": message}})
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


# ------------------------------------------------------------------------------------------------ index holder


class IndexHolder:
    """The served Retriever, swapped for a new one when the database's active generation changes.

    Requests take a :meth:`lease`; a swap only replaces the current Retriever, and the replaced one is closed by
    whoever releases its last lease (or at once when it has none).

    Args:
        index_dir: the index directory.
        loader: opens the active generation of ``index_dir`` (default :meth:`Retriever.load`).
    """

    def __init__(self, index_dir: Path, loader: Callable[[Path], Retriever] | None = None) -> None:
        self.index_dir = index_dir
        self._loader = loader or Retriever.load
        self.db: Database = open_index_database(index_dir)
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()  # one loader at a time
        self._leases: dict[int, int] = {}  # id(retriever) -> requests using it
        self._retired: dict[int, Retriever] = {}
        try:
            self._current = self._loader(index_dir)
        except BaseException:
            self.db.close()
            raise
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    @property
    def generation(self) -> int:
        """Id of the generation new requests are served from."""
        with self._lock:
            return self._current.generation_id

    @contextlib.contextmanager
    def lease(self) -> Iterator[Retriever]:
        """The current Retriever, kept open until the block ends."""
        with self._lock:
            retriever = self._current
            self._leases[id(retriever)] = self._leases.get(id(retriever), 0) + 1
        try:
            yield retriever
        finally:
            with self._lock:
                left = self._leases[id(retriever)] - 1
                if left:
                    self._leases[id(retriever)] = left
                else:
                    del self._leases[id(retriever)]
                closing = self._retired.pop(id(retriever)) if not left and id(retriever) in self._retired else None
            if closing is not None:
                self._close(closing)

    def active_generation_id(self) -> int | None:
        """The database's active generation id (one indexed SELECT)."""
        generation = self.db.active_generation()
        return None if generation is None else generation.id

    def refresh(self) -> bool:
        """Load and swap in the database's active generation when it differs from the served one.

        Returns:
            Whether a new generation was swapped in.
        """
        with self._load_lock:
            active = self.active_generation_id()
            if active is None or active == self.generation:
                return False
            new = self._loader(self.index_dir)
            with self._lock:
                old = self._current
                self._current = new
                in_use = id(old) in self._leases
                if in_use:
                    self._retired[id(old)] = old
            logger.info("swapped index generation %d -> %d", old.generation_id, new.generation_id)
            if not in_use:
                self._close(old)
            return True

    @staticmethod
    def _close(retriever: Retriever) -> None:
        logger.info("closing retired index generation %d", retriever.generation_id)
        retriever.close()

    def start_polling(self, interval_s: float) -> None:
        """Check for a new generation every ``interval_s`` seconds in a daemon thread (until :meth:`close`)."""
        if interval_s <= 0 or self._poller is not None:
            return

        def poll() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.refresh()
                except Exception:  # keep serving the old generation; the next poll retries
                    logger.exception("could not load the new index generation of %s", self.index_dir)

        self._poller = threading.Thread(target=poll, name="prvr-generation-poller", daemon=True)
        self._poller.start()

    def close(self) -> None:
        """Stop polling and close every Retriever and the database."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join()
            self._poller = None
        with self._lock:
            retrievers = [self._current, *self._retired.values()]
            self._retired.clear()
        for retriever in retrievers:
            retriever.close()
        self.db.close()


# ------------------------------------------------------------------------------------------------ middleware


class RequestLogMiddleware:
    """Logs one line per HTTP request: method, path (never the query string: it may hold queries), status, latency."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            latency_ms = (time.perf_counter() - start) * 1000
            logger.info("%s %s %d %.1fms", scope["method"], scope["path"], status, latency_ms)


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with a JSON 413: by Content-Length when it is sent, else by reading
    the (chunked) body up to the limit and handing the buffered body on."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body over {self.max_bytes} bytes; send fewer or shorter queries per request"
        await _error_response(413, "too_large", message)(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        length = headers.get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)  # the server stops at Content-Length
            return
        if b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# ------------------------------------------------------------------------------------------------ the app


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "The request cannot be served as given."),
        (401, "Missing or wrong X-API-Key."),
        (404, "Unknown video or no local media."),
        (422, "Invalid parameters (empty or too long query, k out of range, ...)."),
        (503, "Overloaded: the search queue is full or the request timed out; retry after Retry-After seconds."),
    )
}


def _hits(results: Sequence[SearchResult], media_urls: dict[str, str | None]) -> list[SearchHit]:
    hits = []
    for rank, result in enumerate(results, start=1):
        relevance = (
            None if result.relevance is None else [round(float(x), RELEVANCE_DIGITS) for x in result.relevance]
        )
        hits.append(
            SearchHit(
                rank=rank,
                video_id=result.video_id,
                score=float(result.score),
                duration=None if result.duration is None else float(result.duration),
                moments=[MomentOut(start_sec=m.start_sec, end_sec=m.end_sec, score=m.score) for m in result.moments],
                relevance=relevance,
                media_url=media_urls.get(result.video_id),
            )
        )
    return hits


def create_app(settings: ServiceSettings, *, loader: Callable[[Path], Retriever] | None = None) -> FastAPI:
    """Build the service over ``settings.index_dir`` (its active generation is loaded now).

    Args:
        settings: limits, API key, polling and logging choices.
        loader: opens the active generation of an index directory (default :meth:`Retriever.load`; tests pass one
            with a local text encoder).

    Returns:
        The FastAPI app; ``app.state.holder`` is its :class:`IndexHolder`.

    Raises:
        FileNotFoundError / RuntimeError / ValueError: from loading the index (see :meth:`Retriever.load`).
    """
    holder = IndexHolder(settings.index_dir, loader)
    write_lock = threading.Lock()  # query-log writes, one at a time

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        holder.start_polling(settings.poll_interval_s)
        try:
            yield
        finally:
            batcher.close()
            holder.close()

    app = FastAPI(
        title="prvr search",
        version="0.1.0",
        description="Partially relevant video retrieval: ranked videos with their predicted moments.",
        lifespan=lifespan,
    )
    app.state.holder = holder
    app.state.settings = settings
    # the largest useful body: the most queries of the longest text (4 bytes a character in UTF-8), plus slack
    body_bytes = settings.max_request_queries * settings.max_query_chars * 4 + 4096
    app.add_middleware(BodyLimitMiddleware, max_bytes=body_bytes)
    app.add_middleware(RequestLogMiddleware)

    # ---------------------------------------------------------------------------------------- errors

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, error: ServiceError) -> JSONResponse:
        return _error_response(error.status, error.code, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for item in error.errors():
            where = ".".join(str(part) for part in item.get("loc", ()) if part not in ("query", "body", "path"))
            problems.append(f"{where or 'request'}: {item.get('msg', 'invalid')}")
        return _error_response(422, "invalid_request", "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        message = str(error.detail) if error.status_code != 404 else "no such endpoint; see /docs for the API"
        return _error_response(error.status_code, code, message, getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(_: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=error)
        return _error_response(500, "internal_error", "internal server error; the server log has the details")

    # ---------------------------------------------------------------------------------------- auth

    key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="Needed when the server sets a key.")

    def require_key(key: str | None = Depends(key_header)) -> None:
        if settings.api_key is None:
            return
        if key is None or not hmac.compare_digest(key.encode(), settings.api_key.encode()):
            raise ServiceError(401, "unauthorized", f"missing or wrong {API_KEY_HEADER} header; this server needs "
                                                    "its API key", headers={"WWW-Authenticate": API_KEY_HEADER})

    # ---------------------------------------------------------------------------------------- helpers

    def check_k(k: int) -> None:
        if not 1 <= k <= settings.max_k:
            raise ServiceError(422, "invalid_request", f"k must be between 1 and {settings.max_k}, got {k}")

    def clean_queries(queries: Sequence[str]) -> list[str]:
        if not queries:
            raise ServiceError(422, "invalid_request", "no queries given; pass at least one sentence")
        if len(queries) > settings.max_request_queries:
            raise ServiceError(422, "invalid_request", f"{len(queries)} queries in one request; at most "
                                                       f"{settings.max_request_queries} allowed, split the batch")
        cleaned = []
        for position, text in enumerate(queries):
            try:  # the one query-text policy of the CLI and the Python API (prvr.query_text)
                cleaned.append(clean_query(text, where="q" if len(queries) == 1 else f"queries[{position}]",
                                           max_chars=settings.max_query_chars))
            except QueryTextError as error:
                raise ServiceError(422, "invalid_request", str(error)) from None
        return cleaned

    def media_url(video_id: str) -> str:
        url = f"/videos/{quote(video_id, safe='')}/media"
        if settings.api_key is not None:
            url += "?token=" + media.sign_media(settings.api_key, video_id, settings.media_token_ttl_s)
        return url

    def served_video(video_id: str, generation: int) -> Video:
        """The live video row of ``video_id`` when it belongs to the served generation, else 404."""
        video = holder.db.get_video(video_id)
        member = False
        if video is not None and video.status is not VideoStatus.DELETED:
            with holder.db.session(readonly=True) as session:
                member = session.get(GenerationVideo, (generation, video.id)) is not None
        if video is None or not member:
            raise ServiceError(404, "not_found", f"video {video_id!r} is not in the served index (generation "
                                                 f"{generation}); ids come from /search results")
        return video

    def media_urls(video_ids: Sequence[str]) -> dict[str, str | None]:
        if not video_ids:
            return {}
        with holder.db.session(readonly=True) as session:
            rows = session.execute(
                select(Video.external_id, Video.uri).where(Video.external_id.in_(set(video_ids)),
                                                           Video.deleted_at.is_(None))
            ).all()
        return {
            external_id: media_url(external_id) if media.local_media_path(uri, holder.index_dir) else None
            for external_id, uri in rows
        }

    def run_batch(key: Hashable, texts: list[str]) -> list[tuple[int, list[SearchHit]]]:
        """One ``Retriever.search`` for the joined queries of a batch (all with the same k / moments / relevance):
        each query's generation and hits. Runs in a batcher worker thread."""
        k, moments, relevance = key
        start = time.perf_counter()
        with holder.lease() as retriever:  # one generation for the whole batch
            generation = retriever.generation_id
            try:
                results = retriever.search(texts, k, localize=moments, relevance=relevance)
            except RuntimeError as error:  # e.g. an index without a query text encoder
                raise ServiceError(503, "unavailable", str(error)) from error
            except ValueError as error:
                raise ServiceError(400, "bad_request", str(error)) from error
        urls = media_urls([result.video_id for row in results for result in row])
        answers = [(generation, _hits(row, urls)) for row in results]
        if settings.query_log:
            took_ms = (time.perf_counter() - start) * 1000 / len(texts)
            with write_lock:
                for text, (_, hits) in zip(texts, answers):
                    holder.db.log_query(text, k=k, latency_ms=took_ms, n_results=len(hits), generation_id=generation)
        return answers

    batcher = SearchBatcher(run_batch, settings.batching)
    app.state.batcher = batcher

    async def search(queries: Sequence[str], k: int, moments: bool,
                     relevance: bool) -> tuple[int, list[SearchResponse]]:
        """Clean and check, then wait for the batcher's answer (never longer than the request timeout)."""
        start = time.perf_counter()
        texts = clean_queries(queries)
        check_k(k)
        try:
            answers = await batcher.answer((k, moments, relevance), texts)
        except (Overloaded, SearchTimeout) as error:
            code = "overloaded" if isinstance(error, Overloaded) else "timeout"
            raise ServiceError(503, code, str(error), headers={"Retry-After": str(error.retry_after_s)}) from None
        took_ms = (time.perf_counter() - start) * 1000
        generation = answers[0][0]
        responses = [SearchResponse(query=text, k=k, generation=generation, took_ms=took_ms, results=hits)
                     for text, (_, hits) in zip(texts, answers)]
        return generation, responses

    # ---------------------------------------------------------------------------------------- endpoints

    @app.get("/health", response_model=Health, tags=["service"])
    async def health() -> Health:
        """Liveness, which index generation answers, and how many queries wait in the search queue."""
        with holder.lease() as retriever:
            return Health(status="ok", generation=retriever.generation_id,
                          generation_directory=retriever.manifest.generation,
                          num_videos=retriever.num_videos, queued_queries=batcher.queued)

    @app.get("/search", response_model=SearchResponse, responses=_ERRORS, tags=["search"],
             dependencies=[Depends(require_key)])
    async def search_get(
        q: str = Query(description="The sentence to search for."),
        k: int = Query(default=10, description="Number of videos to return."),
        moments: bool = Query(default=True, description="Localise moments in each hit."),
        relevance: bool = Query(default=False, description="Return each hit's per-frame relevance curve."),
    ) -> SearchResponse:
        """Rank the indexed videos for one sentence."""
        return (await search([q], k, moments, relevance))[1][0]

    @app.post("/search", response_model=BatchSearchResponse, responses=_ERRORS, tags=["search"],
              dependencies=[Depends(require_key)])
    async def search_post(request: BatchSearchRequest) -> BatchSearchResponse:
        """Rank the indexed videos for several sentences at once (one model pass)."""
        start = time.perf_counter()
        generation, responses = await search(request.queries, request.k, request.moments, request.relevance)
        return BatchSearchResponse(generation=generation, took_ms=(time.perf_counter() - start) * 1000,
                                   responses=responses)

    @app.get("/videos/{video_id}", response_model=VideoInfo, responses=_ERRORS, tags=["videos"],
             dependencies=[Depends(require_key)])
    def video_info(video_id: str) -> VideoInfo:
        """Metadata of one indexed video."""
        video = served_video(video_id, holder.generation)
        has_media = media.local_media_path(video.uri, holder.index_dir) is not None
        return VideoInfo(video_id=video.external_id, duration=video.duration_s, fps=video.fps,
                         n_frames=video.n_frames, n_clips=video.n_clips, status=video.status.value,
                         media_url=media_url(video.external_id) if has_media else None)

    @app.get("/videos/{video_id}/media", responses={**_ERRORS, 206: {"description": "Partial content."},
                                                    416: {"model": ErrorResponse, "description": "Bad range."}},
             response_class=Response, tags=["videos"])
    def video_media(
        video_id: str,
        request: Request,
        token: str | None = Query(default=None, description="Signed media token from a search result's media_url."),
        key: str | None = Depends(key_header),
    ) -> Response:
        """Stream the video's registered local file (supports HTTP Range requests)."""
        if settings.api_key is not None and not (token and media.verify_media_token(settings.api_key, video_id,
                                                                                     token)):
            require_key(key)
        video = served_video(video_id, holder.generation)
        path = media.local_media_path(video.uri, holder.index_dir)
        if path is None:
            raise ServiceError(404, "not_found", f"video {video_id!r} has no local media file registered in the "
                                                 "index (its uri is missing, remote, or the file is gone)")
        size = path.stat().st_size
        headers = {"Accept-Ranges": "bytes"}
        try:
            span = media.parse_range(request.headers.get("range"), size)
        except media.RangeNotSatisfiable as error:
            raise ServiceError(416, "range_not_satisfiable", f"{error}; ask for bytes=0-{max(size - 1, 0)} or less",
                               headers={"Content-Range": f"bytes */{size}"}) from error
        kind = media.media_type(path)
        if span is None:
            return StreamingResponse(media.iter_file_range(path, 0, size - 1), media_type=kind,
                                     headers={**headers, "Content-Length": str(size)})
        first, last = span
        headers.update({"Content-Range": f"bytes {first}-{last}/{size}", "Content-Length": str(last - first + 1)})
        return StreamingResponse(media.iter_file_range(path, first, last), status_code=206, media_type=kind,
                                 headers=headers)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
