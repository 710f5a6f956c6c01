"""Request and response bodies of the search service (pydantic models; the OpenAPI schema is generated from them).

They mirror ``prvr.retriever.SearchResult`` and ``prvr.types.Moment``: a hit is a video id, its exact DreamPRVR score,
the video's duration, its predicted moments in seconds and, on request, the per-frame relevance curve.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BatchSearchRequest",
    "BatchSearchResponse",
    "ErrorBody",
    "ErrorResponse",
    "Health",
    "MomentOut",
    "SearchHit",
    "SearchResponse",
    "VideoInfo",
]


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class MomentOut(_Out):
    """One predicted span inside a video (``prvr.types.Moment``)."""

    start_sec: float = Field(description="Start of the span in seconds (>= 0).")
    end_sec: float = Field(description="End of the span in seconds (<= the video duration).")
    score: float = Field(description="The localiser's confidence in [0, 1].")


class SearchHit(_Out):
    """One retrieved video (``prvr.retriever.SearchResult``)."""

    rank: int = Field(description="1 for the best video.")
    video_id: str = Field(description="External video id.")
    score: float = Field(description="Exact DreamPRVR score (clip + frame scale).")
    duration: float | None = Field(description="Video duration in seconds, when known.")
    moments: list[MomentOut] = Field(description="Predicted moments, best first (empty without a localiser).")
    relevance: list[float] | None = Field(
        default=None, description="Per-frame relevance curve over [0, duration] (only with relevance=true)."
    )
    media_url: str | None = Field(
        default=None, description="URL of the video file when the index registers a local file for it."
    )


class SearchResponse(_Out):
    """The ranked videos for one query."""

    query: str
    k: int
    generation: int = Field(description="Id of the index generation that answered.")
    took_ms: float = Field(description="Server-side time of the search in milliseconds.")
    results: list[SearchHit]


class BatchSearchRequest(BaseModel):
    """Several queries answered in one model pass (``POST /search``). Strict types: ``k: true`` or ``k: "3"`` is
    refused, not read as 1 or 3."""

    model_config = ConfigDict(extra="forbid", strict=True)

    queries: list[str] = Field(description="The sentences to search for.")
    k: int = Field(default=10, description="Results per query.")
    moments: bool = Field(default=True, description="Localise moments in each hit.")
    relevance: bool = Field(default=False, description="Return each hit's per-frame relevance curve.")


class BatchSearchResponse(_Out):
    """One :class:`SearchResponse` per query, in request order."""

    generation: int
    took_ms: float
    responses: list[SearchResponse]


class VideoInfo(_Out):
    """Metadata of one indexed video (``GET /videos/{id}``)."""

    video_id: str
    duration: float | None
    fps: float | None
    n_frames: int | None
    n_clips: int | None
    status: str = Field(description="Pipeline status: pending, embedded, indexed, failed or deleted.")
    media_url: str | None = Field(description="Where to stream the file from, when it is a local file.")


class Health(_Out):
    """Liveness and what is being served."""

    status: str
    generation: int
    generation_directory: str
    num_videos: int
    queued_queries: int = Field(default=0, description="Queries waiting in the search queue now.")


class ErrorBody(_Out):
    code: str = Field(description="A short machine-readable reason, e.g. invalid_request, not_found, unauthorized.")
    message: str = Field(description="What went wrong and how to fix it.")


class ErrorResponse(_Out):
    """Every error the service returns has this shape."""

    error: ErrorBody
