"""Caption files (``<vid>#enc#<k> <text>``) and their moments sidecar (JSONL timestamps), read and written safely.

Layout (MS-SL release): ``<root>/<collection>/TextData/<collection><split>.caption.txt`` holds one query per line,
``<cap id> <text>``; the video id is the part of the cap id before the first ``#``. The moments sidecar
``TextData/<collection><split>.moments.jsonl`` holds one JSON object per line,
``{"cap_id", "video_id", "windows": [[start, end], ...], "duration"}``, with times in seconds.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from prvr.fileio import write_text_atomic
from prvr.types import QueryRecord

__all__ = [
    "iter_jsonl",
    "CAPTION_LAYOUT",
    "Windows",
    "read_text_lines",
    "check_control_characters",
    "caption_path",
    "read_captions",
    "write_captions",
    "with_caption_ids",
    "next_caption_numbers",
    "moments_path",
    "read_moments",
    "write_moments",
]

logger = logging.getLogger(__name__)

CAPTION_LAYOUT = "<root>/<collection>/TextData/<collection><split>.caption.txt"

Windows = tuple[tuple[float, float], ...]


# C0 controls but the tab (a field separator like a space), DEL, C1 controls, the Unicode line / paragraph separators
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_NAMES = {"\0": "NUL", "\r": "carriage return", "\x0b": "vertical tab", "\x0c": "form feed",
                  "\x1b": "escape", "\x7f": "DEL", "\x85": "next line", "\u2028": "line separator",
                  "\u2029": "paragraph separator"}


def check_control_characters(line: str, where: str) -> None:
    """Refuse control characters in one line of text (its line ending already removed); a tab is allowed.

    NUL, the other C0 and C1 controls, DEL, a carriage return inside the line and the Unicode line / paragraph
    separators (U+2028, U+2029) would be trained on or split the line elsewhere, so they are errors, not skipped.

    Args:
        line: the decoded line.
        where: "<file>, line <n>" for the message.

    Raises:
        ValueError: the message names ``where``, the character, its column and the fix.
    """
    found = _CONTROL.search(line)
    if found is None:
        return
    char = found.group()
    raise ValueError(
        f"{where}: control character U+{ord(char):04X} ({_CONTROL_NAMES.get(char, 'control character')}) at column "
        f"{found.start() + 1}; text lines must be printable UTF-8 (a tab is fine): remove it or re-export the file"
    )


def read_text_lines(path: str | os.PathLike[str], what: str = "file") -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, decoded line without its line ending) of a UTF-8 text file.

    Lines end with LF or CRLF; a line holding NUL or another control character (a tab is fine) is refused by
    :func:`check_control_characters`.

    Args:
        path: the file.
        what: how to call the file in errors (e.g. "caption file").

    Returns:
        An iterator over (line number, line).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a line is not valid UTF-8 or holds a control character (the message names the file and the
            line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
        data = data[3:]
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(
                f"{path}, line {number}: not valid UTF-8 ({error.reason} at byte {error.start} of the line); "
                f"re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
            ) from None
        line = line[:-1] if line.endswith("\r") else line
        check_control_characters(line, f"{path}, line {number}")
        yield number, line


def iter_jsonl(path: str | os.PathLike[str], what: str = "file") -> Iterator[tuple[str, Any]]:
    """Yield ("<path>, line <n>", parsed object) for every non-blank line of a UTF-8 JSONL file."""
    for number, line in read_text_lines(path, what):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not valid JSON ({error.msg} at column {error.colno}); each line must be one "
                             "JSON object") from None


# ----------------------------------------------------------------------------------------------------------------
# caption files


def caption_path(root: str | os.PathLike[str], collection: str, split: str) -> Path:
    """``<root>/<collection>/TextData/<collection><split>.caption.txt``.

    Args:
        root: the data root holding one folder per collection.
        collection: e.g. ``"activitynet"``, ``"tvr"``, ``"charades"``.
        split: e.g. ``"train"``, ``"val"``, ``"test"``.

    Returns:
        The caption file's path (not checked for existence).
    """
    return Path(root) / collection / "TextData" / f"{collection}{split}.caption.txt"


def read_captions(path: str | os.PathLike[str]) -> list[QueryRecord]:
    """Read a caption file into query records (``query_id`` = cap id, no windows, no duration).

    Blank lines are skipped; text is stripped.

    Args:
        path: a ``.caption.txt`` file.

    Returns:
        The records in file order.

    Raises:
        FileNotFoundError: the file does not exist (the message names the expected layout).
        ValueError: non-UTF-8 bytes, a control character (NUL, ESC, ...; a tab is fine), a line without text, a
            cap id without ``#``, or a duplicate cap id; the message names the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"caption file {path} does not exist; captions are expected at {CAPTION_LAYOUT}, one "
            f"'<video_id>#enc#<k> <text>' per line"
        )
    records: list[QueryRecord] = []
    first_line: dict[str, int] = {}
    for number, line in read_text_lines(path, "caption file"):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        cap_id = parts[0]
        if len(parts) < 2 or not parts[1].strip():
            raise ValueError(
                f"{path}, line {number}: cap id {cap_id!r} has no text; each line must be "
                f"'<video_id>#enc#<k> <text>' (delete the line or add its text)"
            )
        if "#" not in cap_id:
            raise ValueError(
                f"{path}, line {number}: cap id {cap_id!r} has no '#'; cap ids look like '<video_id>#enc#<k>' "
                f"(the video id is the part before the first '#')"
            )
        video_id = cap_id.split("#", 1)[0]
        if not video_id:
            raise ValueError(f"{path}, line {number}: cap id {cap_id!r} starts with '#', so its video id is empty")
        if cap_id in first_line:
            raise ValueError(
                f"{path}, line {number}: duplicate cap id {cap_id!r} (first on line {first_line[cap_id]}); "
                f"cap ids must be unique, renumber the k in '<video_id>#enc#<k>'"
            )
        first_line[cap_id] = number
        records.append(QueryRecord(query_id=cap_id, video_id=video_id, text=parts[1].strip()))
    logger.debug("read %d captions from %s", len(records), path)
    return records


def _check_caption_record(record: QueryRecord, where: str) -> None:
    cap_id = record.query_id
    if not cap_id or any(ch.isspace() for ch in cap_id):
        raise ValueError(f"{where}: cap id {cap_id!r} is empty or contains whitespace; cap ids must be one token")
    if "#" not in cap_id or cap_id.split("#", 1)[0] != record.video_id:
        raise ValueError(
            f"{where}: cap id {cap_id!r} does not start with '{record.video_id}#'; caption files derive the video id "
            f"from the cap id, so rename the queries first, e.g. with prvr.data.captions.with_caption_ids(records)"
        )
    if not record.text.strip() or "\n" in record.text or "\r" in record.text:
        raise ValueError(f"{where}: the text of {cap_id!r} is empty or spans several lines; give one line of text")


def write_captions(path: str | os.PathLike[str], records: Iterable[QueryRecord]) -> None:
    """Write ``<cap id> <text>`` lines atomically (temp file in the same folder, fsync, ``os.replace``).

    Args:
        path: the destination ``.caption.txt`` (its folder must exist).
        records: queries whose ``query_id`` is ``<video_id>#...`` (see :func:`with_caption_ids`).

    Raises:
        ValueError: a cap id that does not match its video id, contains whitespace or repeats, or an empty text.
    """
    path = Path(path)
    seen: set[str] = set()
    lines = []
    for index, record in enumerate(records):
        _check_caption_record(record, f"write_captions({path}), record {index}")
        if record.query_id in seen:
            raise ValueError(f"write_captions({path}), record {index}: duplicate cap id {record.query_id!r}")
        seen.add(record.query_id)
        lines.append(f"{record.query_id} {record.text.strip()}\n")
    write_text_atomic(path, "".join(lines))


def next_caption_numbers(paths: Iterable[str | os.PathLike[str]]) -> dict[str, int]:
    """Per video, the first caption number k free after every id the caption files at ``paths`` use.

    An id ending in ``#<k>`` uses k; any other id of the video uses one more number. The result is the ``start`` of
    :func:`with_caption_ids`, so that splits sharing one query feature file keep distinct ids.
    """
    start: dict[str, int] = {}
    for path in paths:
        for record in read_captions(path):
            tail = record.query_id.rsplit("#", 1)[-1]
            used = int(tail) + 1 if tail.isdigit() else start.get(record.video_id, 0) + 1
            start[record.video_id] = max(start.get(record.video_id, 0), used)
    return start


def with_caption_ids(records: Sequence[QueryRecord], start: dict[str, int] | None = None) -> list[QueryRecord]:
    """Rename queries to the caption convention ``<video_id>#enc#<k>``, k counting each video's queries in order.

    Useful before :func:`write_captions` for sources whose own ids are not of that form (TVR ``desc_id``,
    QVHighlights ``qid``). Everything but ``query_id`` is kept.

    Args:
        records: the queries, in the order that defines k.
        start: per video, the first k (default 0): numbers already used by other splits' caption files of the same
            videos, so ids stay unique across the splits that share one query feature file.

    Returns:
        New records with caption-style ids.
    """
    counts: dict[str, int] = dict(start or {})
    renamed = []
    for record in records:
        k = counts.get(record.video_id, 0)
        counts[record.video_id] = k + 1
        renamed.append(
            QueryRecord(f"{record.video_id}#enc#{k}", record.video_id, record.text, record.windows, record.duration)
        )
    return renamed


# ----------------------------------------------------------------------------------------------------------------
# moments sidecar


def moments_path(root: str | os.PathLike[str], collection: str, split: str) -> Path:
    """``<root>/<collection>/TextData/<collection><split>.moments.jsonl`` (beside the caption file).

    Args:
        root: the data root.
        collection: the collection name.
        split: the split name.

    Returns:
        The sidecar's path (not checked for existence).
    """
    return Path(root) / collection / "TextData" / f"{collection}{split}.moments.jsonl"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_windows(value: object, where: str) -> Windows:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: 'windows' must be a list of [start, end] pairs, got {value!r}")
    windows = []
    for window in value:
        if not isinstance(window, (list, tuple)) or len(window) != 2 or not all(_is_number(t) for t in window):
            raise ValueError(f"{where}: window {window!r} is not a [start, end] pair of numbers in seconds")
        start, end = float(window[0]), float(window[1])
        if not (math.isfinite(start) and math.isfinite(end)):
            raise ValueError(f"{where}: window {window!r} has a non-finite time; use finite seconds")
        if start < 0 or start > end:
            raise ValueError(f"{where}: window {window!r} must satisfy 0 <= start <= end (seconds)")
        windows.append((start, end))
    return tuple(windows)


def _parse_duration(value: object, where: str) -> float | None:
    if value is None:
        return None
    if not _is_number(value) or not math.isfinite(float(value)) or float(value) <= 0:
        raise ValueError(f"{where}: 'duration' must be a finite number of seconds > 0 or null, got {value!r}")
    return float(value)


def read_moments(path: str | os.PathLike[str]) -> dict[str, tuple[Windows, float | None]]:
    """Read a moments sidecar.

    Args:
        path: a ``.moments.jsonl`` file.

    Returns:
        cap id -> (windows as ((start, end), ...) in seconds, duration in seconds or None).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: bad JSON, a missing key, a bad window (non-finite, negative, start > end), a duration <= 0,
            a video id that contradicts the cap id, or a duplicate cap id; the message names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"moments file {path} does not exist; it is expected beside the captions at "
            f"<root>/<collection>/TextData/<collection><split>.moments.jsonl"
        )
    moments: dict[str, tuple[Windows, float | None]] = {}
    first_seen: dict[str, str] = {}
    for where, obj in iter_jsonl(path, "moments file"):
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        missing = [key for key in ("cap_id", "video_id", "windows") if key not in obj]
        if missing:
            raise ValueError(f"{where}: missing key(s) {missing}; lines look like "
                             f'{{"cap_id", "video_id", "windows": [[s, e], ...], "duration"}}')
        cap_id, video_id = obj["cap_id"], obj["video_id"]
        if not isinstance(cap_id, str) or not cap_id or not isinstance(video_id, str) or not video_id:
            raise ValueError(f"{where}: 'cap_id' and 'video_id' must be non-empty strings")
        if "#" in cap_id and cap_id.split("#", 1)[0] != video_id:
            raise ValueError(f"{where}: cap id {cap_id!r} belongs to video {cap_id.split('#', 1)[0]!r}, "
                             f"not {video_id!r}; fix the video_id")
        if cap_id in first_seen:
            raise ValueError(f"{where}: duplicate cap id {cap_id!r} (first at {first_seen[cap_id]})")
        first_seen[cap_id] = where
        moments[cap_id] = (_parse_windows(obj["windows"], where), _parse_duration(obj.get("duration"), where))
    return moments


def write_moments(path: str | os.PathLike[str], records: Iterable[QueryRecord]) -> None:
    """Write the moments sidecar atomically, one JSON object per record.

    Args:
        path: the destination ``.moments.jsonl`` (its folder must exist).
        records: queries with their windows (possibly empty) and durations.

    Raises:
        ValueError: an invalid window or duration, or a duplicate query id (validated before anything is written).
    """
    path = Path(path)
    seen: set[str] = set()
    lines = []
    for index, record in enumerate(records):
        where = f"write_moments({path}), record {index} ({record.query_id!r})"
        if not record.query_id or not record.video_id:
            raise ValueError(f"{where}: query_id and video_id must be non-empty")
        if record.query_id in seen:
            raise ValueError(f"{where}: duplicate query id")
        seen.add(record.query_id)
        windows = _parse_windows([list(w) for w in record.windows], where)
        duration = _parse_duration(record.duration, where)
        obj = {"cap_id": record.query_id, "video_id": record.video_id, "windows": [list(w) for w in windows],
               "duration": duration}
        lines.append(json.dumps(obj, ensure_ascii=False) + "\n")
    write_text_atomic(path, "".join(lines))
