"""Readers of the public annotation files (TVR, Charades-STA, ActivityNet Captions, QVHighlights) into QueryRecords.

Query ids: TVR ``str(desc_id)`` and QVHighlights ``str(qid)`` (the ids their official evaluators use); Charades-STA
and ActivityNet Captions have no ids of their own and get ``<video_id>#enc#<k>``, k counting each video's sentences
in file order, the caption-file convention (see ``prvr.data.captions.with_caption_ids`` for the other two).

Windows are (start, end) seconds. Every reader rejects malformed records with a ValueError naming the file, the
line or record and the problem. Reversed windows (start > end) are swapped and windows are clamped into
[0, duration] when the duration is known; both are logged with per-file counts.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prvr.data.captions import iter_jsonl, read_captions, read_text_lines
from prvr.types import QueryRecord

__all__ = [
    "ANNOTATION_FORMATS",
    "read_tvr_jsonl",
    "read_tvr_query_texts",
    "read_tvr_durations",
    "read_charades_sta",
    "read_activitynet_captions",
    "read_qvhighlights_jsonl",
    "detect_format",
    "read_annotations",
]

logger = logging.getLogger(__name__)

ANNOTATION_FORMATS = ("tvr", "charades", "activitynet", "qvhighlights", "captions")


# ----------------------------------------------------------------------------------------------------------------
# shared checks


@dataclass
class _WindowRepairs:
    """Counts of the repairs made while reading one file (logged once at the end)."""

    swapped: int = 0
    clamped: int = 0

    def log(self, path: Path) -> None:
        if self.swapped or self.clamped:
            logger.warning(
                "%s: swapped %d reversed window(s) (start > end) and clamped %d window(s) into [0, duration]",
                path, self.swapped, self.clamped,
            )


def _number(value: Any, where: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: {name} must be a number of seconds, got {value!r}; fix the record")
    number = float(value)
    if math.isnan(number):
        raise ValueError(f"{where}: {name} is NaN; fix or drop the record")
    if math.isinf(number):
        raise ValueError(f"{where}: {name} is infinite; fix or drop the record")
    return number


def _duration(value: Any, where: str) -> float:
    duration = _number(value, where, "duration")
    if duration < 0:
        raise ValueError(f"{where}: negative duration {duration}; durations are video lengths in seconds")
    if duration == 0:
        raise ValueError(f"{where}: duration is 0; a video needs a positive length in seconds")
    return duration


def _window(
    start: float, end: float, duration: float | None, where: str, repairs: _WindowRepairs
) -> tuple[float, float]:
    """Swap a reversed window and clamp it into [0, duration] (or [0, inf) without a duration)."""
    if start > end:
        logger.debug("%s: reversed window [%s, %s] swapped", where, start, end)
        repairs.swapped += 1
        start, end = end, start
    upper = duration if duration is not None else math.inf
    clamped_start, clamped_end = min(max(start, 0.0), upper), min(max(end, 0.0), upper)
    if (clamped_start, clamped_end) != (start, end):
        logger.debug("%s: window [%s, %s] clamped into [0, %s]", where, start, end, duration)
        repairs.clamped += 1
    return clamped_start, clamped_end


def _json_window(value: Any, duration: float | None, where: str, repairs: _WindowRepairs) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{where}: a window must be [start, end] in seconds, got {value!r}")
    return _window(_number(value[0], where, "start"), _number(value[1], where, "end"), duration, where, repairs)


def _text(value: Any, where: str, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: {name} must be a string, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise ValueError(f"{where}: {name} is empty; drop the record or give it a text")
    return text


def _require(obj: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [key for key in keys if key not in obj]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; the record has {sorted(obj)}")


def _check_unique(records: list[QueryRecord], path: Path) -> None:
    seen: set[str] = set()
    for record in records:
        if record.query_id in seen:
            raise ValueError(f"{path}: duplicate query id {record.query_id!r}; query ids must be unique")
        seen.add(record.query_id)


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(
            f"{path}, line {line}: not valid UTF-8 ({error.reason} at byte {error.start}); re-encode it as UTF-8"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}, line {error.lineno}: not valid JSON ({error.msg} at column {error.colno})") from None


def _query_id(value: Any, where: str, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{where}: {name} must be an integer or a non-empty string, got {value!r}")
    return str(value).strip()


def _video_id(value: Any, where: str, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: {name} must be a non-empty string, got {value!r}")
    video_id = value.strip()
    if "#" in video_id or any(ch.isspace() for ch in video_id):
        raise ValueError(f"{where}: video id {video_id!r} contains '#' or whitespace, which cap ids cannot carry")
    return video_id


# ----------------------------------------------------------------------------------------------------------------
# TVR


def read_tvr_jsonl(
    path: str | os.PathLike[str],
    durations: dict[str, float] | None = None,
    *,
    missing_video: Literal["error", "skip"] = "error",
) -> list[QueryRecord]:
    """Read a TVR release file (``{"desc_id", "desc", "vid_name", "ts": [s, e], "duration", "type"}`` per line).

    Records without ``vid_name`` have no ground-truth video (the text-only ``tvr_test_public_release.jsonl`` holds
    only ``desc`` and ``desc_id``). They cannot be QueryRecords, whose video id must be real: by default they raise;
    ``missing_video="skip"`` drops them with one logged warning; :func:`read_tvr_query_texts` reads their texts.

    Args:
        path: the ``.jsonl`` file.
        durations: video id -> seconds, used where a record has no ``duration`` (see :func:`read_tvr_durations`).
        missing_video: what to do with records that have no ``vid_name``.

    Returns:
        Records with ``query_id = str(desc_id)``, one window (or none without ``ts``), and the duration when known.
    """
    path = Path(path)
    if missing_video not in ("error", "skip"):
        raise ValueError(f"missing_video must be 'error' or 'skip', got {missing_video!r}")
    repairs = _WindowRepairs()
    records: list[QueryRecord] = []
    skipped = 0
    for where, obj in iter_jsonl(path, "annotation file"):
        _require(obj, ("desc_id", "desc"), where)
        query_id = _query_id(obj["desc_id"], where, "desc_id")
        text = _text(obj["desc"], where, "desc")
        if "vid_name" not in obj:
            if missing_video == "skip":
                skipped += 1
                continue
            raise ValueError(
                f"{where}: query {query_id} has no 'vid_name' (no ground-truth video, as in the text-only "
                f"tvr_test_public_release.jsonl); read such files with read_tvr_query_texts(path), or pass "
                f"missing_video='skip' to drop these records"
            )
        video_id = _video_id(obj["vid_name"], where, "vid_name")
        duration: float | None = None
        if obj.get("duration") is not None:
            duration = _duration(obj["duration"], where)
        elif durations is not None and video_id in durations:
            duration = _duration(durations[video_id], f"{where} (duration from the durations table)")
        windows: tuple[tuple[float, float], ...] = ()
        if obj.get("ts") is not None:
            windows = (_json_window(obj["ts"], duration, where, repairs),)
        records.append(QueryRecord(query_id, video_id, text, windows, duration))
    if skipped:
        logger.warning("%s: skipped %d record(s) without 'vid_name' (no ground-truth video)", path, skipped)
    repairs.log(path)
    _check_unique(records, path)
    return records


def read_tvr_query_texts(path: str | os.PathLike[str]) -> dict[str, str]:
    """The query texts of any TVR release file, ground truth or not: ``str(desc_id)`` -> stripped ``desc``.

    Args:
        path: a TVR ``.jsonl`` file (e.g. ``tvr_test_public_release.jsonl``).

    Returns:
        desc id -> text, in file order.
    """
    path = Path(path)
    texts: dict[str, str] = {}
    for where, obj in iter_jsonl(path, "annotation file"):
        _require(obj, ("desc_id", "desc"), where)
        query_id = _query_id(obj["desc_id"], where, "desc_id")
        if query_id in texts:
            raise ValueError(f"{where}: duplicate desc_id {query_id}")
        texts[query_id] = _text(obj["desc"], where, "desc")
    return texts


def read_tvr_durations(path: str | os.PathLike[str], split: str) -> dict[str, float]:
    """Read ``tvr_video2dur_idx.json`` (``{split: {vid_name: [duration, idx]}}``) for one split.

    Args:
        path: the JSON file.
        split: ``"train"``, ``"val"``, ``"test_public"`` or ``"test_challenge"``.

    Returns:
        video id -> duration in seconds.
    """
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected {{split: {{vid_name: [duration, idx]}}}}, got {type(data).__name__}")
    if split not in data:
        raise ValueError(f"{path}: no split {split!r}; the file has {sorted(data)}")
    table = data[split]
    if not isinstance(table, dict):
        raise ValueError(f"{path}, split {split!r}: expected {{vid_name: [duration, idx]}}")
    durations: dict[str, float] = {}
    for video_id, entry in table.items():
        where = f"{path}, split {split!r}, video {video_id!r}"
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise ValueError(f"{where}: expected [duration, idx], got {entry!r}")
        durations[_video_id(video_id, where, "vid_name")] = _duration(entry[0], where)
    return durations


# ----------------------------------------------------------------------------------------------------------------
# Charades-STA


def read_charades_sta(
    path: str | os.PathLike[str], durations: dict[str, float] | None = None
) -> list[QueryRecord]:
    """Read Charades-STA lines ``VIDEO_ID START END##sentence``.

    Args:
        path: ``charades_sta_{train,test}.txt``.
        durations: video id -> seconds (e.g. the ``length`` column of Charades_v1_*.csv); when given, windows are
            clamped into [0, duration]. Videos missing from it get no duration (counted in a warning).

    Returns:
        Records with ``query_id = <video_id>#enc#<k>`` (k counts the video's sentences in file order).
    """
    path = Path(path)
    repairs = _WindowRepairs()
    records: list[QueryRecord] = []
    per_video: dict[str, int] = {}
    no_duration: set[str] = set()
    for number, line in read_text_lines(path, "annotation file"):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        if "##" not in line:
            raise ValueError(f"{where}: expected 'VIDEO_ID START END##sentence', found no '##'")
        head, sentence = line.split("##", 1)
        fields = head.split()
        if len(fields) != 3:
            raise ValueError(f"{where}: expected 'VIDEO_ID START END' before '##', got {head.strip()!r}")
        video_id = _video_id(fields[0], where, "video id")
        times = []
        for name, field in zip(("start", "end"), fields[1:]):
            try:
                value = float(field)
            except ValueError:
                raise ValueError(f"{where}: {name} {field!r} is not a number of seconds") from None
            times.append(_number(value, where, name))
        text = _text(sentence, where, "sentence")
        duration: float | None = None
        if durations is not None:
            if video_id in durations:
                duration = _duration(durations[video_id], f"{where} (duration from the durations table)")
            else:
                no_duration.add(video_id)
        k = per_video.get(video_id, 0)
        per_video[video_id] = k + 1
        window = _window(times[0], times[1], duration, where, repairs)
        records.append(QueryRecord(f"{video_id}#enc#{k}", video_id, text, (window,), duration))
    if no_duration:
        logger.warning("%s: %d video(s) have no entry in the durations table, e.g. %s",
                       path, len(no_duration), sorted(no_duration)[:3])
    repairs.log(path)
    return records


# ----------------------------------------------------------------------------------------------------------------
# ActivityNet Captions


def read_activitynet_captions(path: str | os.PathLike[str]) -> list[QueryRecord]:
    """Read ``{video_id: {"duration", "timestamps": [[s, e], ...], "sentences": [...]}}``.

    Sentences are stripped (many carry a leading space); windows are swapped when reversed and clamped into
    [0, duration] (several hundred end times in the public files exceed the duration).

    Args:
        path: ``train.json``, ``val_1.json`` or ``val_2.json``.

    Returns:
        Records with ``query_id = <video_id>#enc#<k>`` (k = the sentence's index within the video), in file order.
    """
    path = Path(path)
    return _activitynet_records(_load_json(path), path)


def _activitynet_records(data: Any, path: Path) -> list[QueryRecord]:
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected {{video_id: {{duration, timestamps, sentences}}}}, got {type(data).__name__}"
        )
    repairs = _WindowRepairs()
    records: list[QueryRecord] = []
    for raw_id, entry in data.items():
        where = f"{path}, video {raw_id!r}"
        video_id = _video_id(raw_id, where, "video id")
        _require(entry, ("duration", "timestamps", "sentences"), where)
        duration = _duration(entry["duration"], where)
        timestamps, sentences = entry["timestamps"], entry["sentences"]
        if not isinstance(timestamps, list) or not isinstance(sentences, list):
            raise ValueError(f"{where}: 'timestamps' and 'sentences' must be lists")
        if len(timestamps) != len(sentences):
            raise ValueError(
                f"{where}: {len(timestamps)} timestamps but {len(sentences)} sentences; they must pair up one to one"
            )
        for k, (window, sentence) in enumerate(zip(timestamps, sentences)):
            record_where = f"{where}, sentence {k}"
            text = _text(sentence, record_where, "sentence")
            span = _json_window(window, duration, record_where, repairs)
            records.append(QueryRecord(f"{video_id}#enc#{k}", video_id, text, (span,), duration))
    repairs.log(path)
    return records


# ----------------------------------------------------------------------------------------------------------------
# QVHighlights


def read_qvhighlights_jsonl(path: str | os.PathLike[str]) -> list[QueryRecord]:
    """Read QVHighlights lines ``{"qid", "query", "vid", "duration", "relevant_windows": [[s, e], ...]}``.

    ``relevant_windows`` is absent in the test release; such records get no windows.

    Args:
        path: ``highlight_{train,val,test}_release.jsonl`` or ``highlight_test_with_gt.jsonl``.

    Returns:
        Records with ``query_id = str(qid)`` and all relevant windows.
    """
    path = Path(path)
    repairs = _WindowRepairs()
    records: list[QueryRecord] = []
    for where, obj in iter_jsonl(path, "annotation file"):
        _require(obj, ("qid", "query", "vid", "duration"), where)
        query_id = _query_id(obj["qid"], where, "qid")
        text = _text(obj["query"], where, "query")
        video_id = _video_id(obj["vid"], where, "vid")
        duration = _duration(obj["duration"], where)
        raw_windows = obj.get("relevant_windows")
        if raw_windows is None:
            raw_windows = []
        if not isinstance(raw_windows, list):
            raise ValueError(f"{where}: 'relevant_windows' must be a list of [start, end], got {raw_windows!r}")
        windows = tuple(_json_window(window, duration, where, repairs) for window in raw_windows)
        records.append(QueryRecord(query_id, video_id, text, windows, duration))
    repairs.log(path)
    _check_unique(records, path)
    return records


# ----------------------------------------------------------------------------------------------------------------
# dispatch


def detect_format(path: str | os.PathLike[str]) -> str:
    """Guess the annotation format of ``path`` from its name and first record.

    Args:
        path: an annotation file.

    Returns:
        One of :data:`ANNOTATION_FORMATS`.

    Raises:
        ValueError: the format cannot be recognised (pass ``fmt`` explicitly).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    name = path.name.lower()
    if name.endswith(".caption.txt"):
        return "captions"
    if name.endswith(".txt"):
        return "charades"
    if name.endswith(".jsonl"):
        for where, obj in iter_jsonl(path, "annotation file"):
            if isinstance(obj, dict) and "desc_id" in obj:
                return "tvr"
            if isinstance(obj, dict) and "qid" in obj:
                return "qvhighlights"
            raise ValueError(f"{where}: neither a TVR ('desc_id') nor a QVHighlights ('qid') record; pass fmt=...")
        raise ValueError(f"{path} is empty; nothing to read")
    if name.endswith(".json"):
        return _detect_json(_load_json(path), path)
    raise ValueError(f"cannot tell the format of {path} from its extension; pass fmt= one of {ANNOTATION_FORMATS}")


def _detect_json(data: Any, path: Path) -> str:
    if isinstance(data, dict) and data:
        first = next(iter(data.values()))
        if isinstance(first, dict) and "timestamps" in first:
            return "activitynet"
        if isinstance(first, dict) and all(isinstance(v, list) and len(v) == 2 for v in list(first.values())[:5]):
            raise ValueError(f"{path} looks like tvr_video2dur_idx.json (durations, not queries); use "
                             f"read_tvr_durations(path, split)")
    raise ValueError(f"{path} is not an ActivityNet Captions file {{video_id: {{duration, timestamps, sentences}}}}")


def read_annotations(
    path: str | os.PathLike[str],
    fmt: Literal["auto", "tvr", "charades", "activitynet", "qvhighlights", "captions"] = "auto",
) -> list[QueryRecord]:
    """Read any supported annotation file.

    Args:
        path: the file.
        fmt: ``"auto"`` (guess from the extension and the first record) or one of :data:`ANNOTATION_FORMATS`.

    Returns:
        The query records.
    """
    path = Path(path)
    if fmt == "auto":
        fmt = detect_format(path)  # type: ignore[assignment]
    if fmt == "tvr":
        return read_tvr_jsonl(path)
    if fmt == "charades":
        return read_charades_sta(path)
    if fmt == "activitynet":
        return read_activitynet_captions(path)
    if fmt == "qvhighlights":
        return read_qvhighlights_jsonl(path)
    if fmt == "captions":
        return read_captions(path)
    raise ValueError(f"unknown annotation format {fmt!r}; choose 'auto' or one of {ANNOTATION_FORMATS}")
