"""Serving registered video files: where a video's ``uri`` points on disk, HTTP byte ranges, signed media links.

Only a file recorded as a video's ``uri`` in the index database is ever opened, so a request can never name a path:
the id is looked up, the uri resolved (a plain path, relative paths against the index directory, or ``file://``),
and anything else (another scheme, a directory, a missing file) is "no local media".
"""

from __future__ import annotations

import hashlib
import hmac
import mimetypes
import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = [
    "CHUNK_BYTES",
    "RangeNotSatisfiable",
    "iter_file_range",
    "local_media_path",
    "media_type",
    "parse_range",
    "sign_media",
    "verify_media_token",
]

CHUNK_BYTES = 256 * 1024
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


class RangeNotSatisfiable(Exception):
    """The Range header is well formed but selects no byte of the file (HTTP 416)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"the requested range starts beyond the end of the file ({size} bytes)")
        self.size = size


def local_media_path(uri: str | None, index_dir: Path) -> Path | None:
    """The regular file a video's ``uri`` names, or None when it is not a local file that exists.

    Args:
        uri: the ``videos.uri`` column: an absolute path, a path relative to the index directory, or a
            ``file://`` URL; other schemes (``http://``, ``s3://``) are not served.
        index_dir: the index directory (base of relative paths).

    Returns:
        The resolved path, or None.
    """
    if not uri:
        return None
    parts = urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            return None
        raw = unquote(parts.path)
    elif parts.scheme and len(parts.scheme) > 1:  # "C:" style drive letters are paths, not schemes
        return None
    else:
        raw = uri
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = index_dir / path
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return resolved if resolved.is_file() else None


def media_type(path: Path) -> str:
    """The Content-Type of a media file, from its extension."""
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte span ``(first, last)`` a ``Range`` header selects in a file of ``size`` bytes.

    Follows RFC 9110 14.2: ``bytes=a-b``, ``bytes=a-`` and ``bytes=-n`` (the last n bytes); ``last`` is clamped to the
    file. A missing or malformed header, another unit, or several ranges give None (the server may then ignore the
    header and send the whole file).

    Args:
        header: the Range header value, or None.
        size: the file size in bytes.

    Returns:
        ``(first, last)`` or None for "send everything".

    Raises:
        RangeNotSatisfiable: when the range selects nothing (first byte past the end, or ``bytes=-0``).

    >>> parse_range("bytes=0-99", 1000), parse_range("bytes=900-", 1000), parse_range("bytes=-100", 1000)
    ((0, 99), (900, 999), (900, 999))
    >>> parse_range("bytes=5-1", 1000) is None, parse_range("items=0-1", 1000) is None
    (True, True)
    """
    if header is None:
        return None
    match = _RANGE.match(header)
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text and not last_text:
        return None
    if not first_text:  # suffix range: the last n bytes
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - suffix), size - 1
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if last_text and last < first:
        return None  # syntactically invalid: ignore the header
    if first >= size:
        raise RangeNotSatisfiable(size)
    return first, min(last, size - 1)


def iter_file_range(path: Path, first: int, last: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Yield the bytes ``first..last`` (inclusive) of a file in chunks."""
    remaining = last - first + 1
    with open(path, "rb") as handle:
        handle.seek(first)
        while remaining > 0:
            chunk = handle.read(min(chunk_bytes, remaining))
            if not chunk:  # the file shrank meanwhile
                return
            remaining -= len(chunk)
            yield chunk


def _signature(key: str, video_id: str, expires: int) -> str:
    message = f"{video_id}\n{expires}".encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()[:32]


def sign_media(key: str, video_id: str, ttl_s: int, now: float | None = None) -> str:
    """A media token for one video, valid ``ttl_s`` seconds: lets a ``<video>`` element (which cannot send the
    ``X-API-Key`` header) stream one file without putting the key itself in the URL.
    """
    expires = int(now if now is not None else time.time()) + int(ttl_s)
    return f"{expires}.{_signature(key, video_id, expires)}"


def verify_media_token(key: str, video_id: str, token: str, now: float | None = None) -> bool:
    """Whether ``token`` was made by :func:`sign_media` with this key and video and has not expired."""
    expires_text, _, signature = token.partition(".")
    if not expires_text.isdigit() or not signature:
        return False
    expires = int(expires_text)
    if expires < (now if now is not None else time.time()):
        return False
    return hmac.compare_digest(signature, _signature(key, video_id, expires))
