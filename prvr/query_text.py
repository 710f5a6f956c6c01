"""The one query-text policy: what the CLI, ``Retriever.search`` and the service accept as a query, and how it is
cleaned before the tokenizer sees it.

1. The query must be a ``str`` (not bytes, not a number).
2. It must be valid Unicode: a lone surrogate (JSON ``"\\ud800"``, undecodable bytes in a command line, which Python
   turns into surrogate escapes) is rejected with its position.
3. It is normalised to NFC; control characters (tabs, newlines, NUL, ...) become spaces, format characters
   (zero-width space / joiners, BOM, direction marks) are removed, and runs of whitespace collapse to one space.
4. What remains must hold at least one visible character and at most :data:`MAX_QUERY_CHARS` characters.

Every violation raises :class:`QueryTextError` (a ``ValueError``) whose message names the problem and the fix; the
service answers it with HTTP 422 and that message.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

__all__ = ["MAX_QUERY_CHARS", "QueryTextError", "clean_query", "clean_queries"]

MAX_QUERY_CHARS = 512  # characters after cleaning; one sentence of a moment rarely needs a tenth of this

_EXAMPLE = '"a man is playing a guitar"'


class QueryTextError(ValueError):
    """A query text that the policy of :mod:`prvr.query_text` refuses; the message says why and what to send."""


def _describe(where: str) -> str:
    return f"{where} " if where else "the query "


def clean_query(text: object, *, where: str = "", max_chars: int = MAX_QUERY_CHARS) -> str:
    """Validate and clean one query text.

    Args:
        text: what the caller passed.
        where: how to name this query in messages (e.g. ``"queries[3]"``); default "the query".
        max_chars: the longest accepted query after cleaning.

    Returns:
        The cleaned text: NFC, no control or format characters, single spaces, stripped.

    Raises:
        QueryTextError: not a string, invalid Unicode, nothing visible, or longer than ``max_chars``.
    """
    name = _describe(where)
    if not isinstance(text, str):
        raise QueryTextError(f"{name}must be text, got {type(text).__name__} ({text!r:.60}); pass a sentence such as "
                             f"{_EXAMPLE}")
    for position, char in enumerate(text):
        if 0xD800 <= ord(char) <= 0xDFFF:
            raise QueryTextError(f"{name}is not valid Unicode (a lone surrogate U+{ord(char):04X} at character "
                                 f"{position}); send UTF-8 text")
    text = unicodedata.normalize("NFC", text)
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if category == "Cf":
            continue  # zero-width and direction marks carry no words
        kept.append(" " if category == "Cc" or char.isspace() else char)
    cleaned = " ".join("".join(kept).split())
    if not cleaned:
        raise QueryTextError(f"{name}is empty (nothing visible after removing control, format and whitespace "
                             f"characters); type a sentence such as {_EXAMPLE}")
    if len(cleaned) > max_chars:
        raise QueryTextError(f"{name}is {len(cleaned)} characters long; at most {max_chars} are accepted: describe "
                             "one moment in a sentence or two")
    return cleaned


def clean_queries(texts: Sequence[object], *, max_chars: int = MAX_QUERY_CHARS) -> list[str]:
    """:func:`clean_query` over a non-empty list; messages name the failing entry (``queries[i]``)."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise QueryTextError(f"expected a list of query texts, got {type(texts).__name__}")
    if len(texts) == 0:
        raise QueryTextError("no queries given; pass at least one sentence")
    where = (lambda i: "") if len(texts) == 1 else (lambda i: f"queries[{i}]")
    return [clean_query(text, where=where(i), max_chars=max_chars) for i, text in enumerate(texts)]
