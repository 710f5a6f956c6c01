"""Annotation readers (TVR, Charades-STA, ActivityNet Captions, QVHighlights) on generated and real files."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from prvr.data.annotations import (
    detect_format,
    read_activitynet_captions,
    read_annotations,
    read_charades_sta,
    read_qvhighlights_jsonl,
    read_tvr_durations,
    read_tvr_jsonl,
    read_tvr_query_texts,
)
from prvr.data.captions import write_captions, read_captions, with_caption_ids
from prvr.types import QueryRecord

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TVR, CHARADES, ANET, QVH = DATA / "tvr", DATA / "charades_sta", DATA / "activitynet_captions", DATA / "qvhighlights"


def _write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def _needs(*paths: Path) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not all(p.is_file() for p in paths), reason="shared annotation data absent")


# ----------------------------------------------------------------------------------------------------------------
# TVR


TVR_ROWS = [
    {"vid_name": "friends_s01e03_seg02_clip_19", "duration": 61.46, "ts": [16.48, 33.87], "desc": " Phoebe eats. ",
     "type": "v", "desc_id": 90200},
    {"vid_name": "castle_s01e01_seg02_clip_20", "ts": [5, 2], "desc": "Castle sits.", "type": "vt", "desc_id": 7},
    {"vid_name": "castle_s01e01_seg02_clip_20", "duration": 10.0, "ts": [-1.0, 12.5], "desc": "Beckett.",
     "desc_id": 8},
]


def test_read_tvr_jsonl(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write_jsonl(tmp_path / "tvr.jsonl", TVR_ROWS[:1] + [""] + TVR_ROWS[1:])
    with caplog.at_level(logging.WARNING, logger="prvr.data.annotations"):
        records = read_tvr_jsonl(path, durations={"castle_s01e01_seg02_clip_20": 4.0})
    assert records == [
        QueryRecord("90200", "friends_s01e03_seg02_clip_19", "Phoebe eats.", ((16.48, 33.87),), 61.46),
        # duration from the table; reversed window swapped then clamped into [0, 4]
        QueryRecord("7", "castle_s01e01_seg02_clip_20", "Castle sits.", ((2.0, 4.0),), 4.0),
        # the record's own duration wins over the table
        QueryRecord("8", "castle_s01e01_seg02_clip_20", "Beckett.", ((0.0, 10.0),), 10.0),
    ]
    assert "swapped 1 reversed window(s)" in caplog.text and "clamped 2 window(s)" in caplog.text
    assert read_tvr_jsonl(path)[1].duration is None  # without a table there is no duration to clamp to
    assert read_tvr_jsonl(path)[1].windows == ((2.0, 5.0),)


def test_tvr_records_without_video(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write_jsonl(tmp_path / "t.jsonl", [TVR_ROWS[0], {"desc": "no video here ", "desc_id": 11}])
    with pytest.raises(ValueError, match=r"line 2: query 11 has no 'vid_name'.*read_tvr_query_texts"):
        read_tvr_jsonl(path)
    with caplog.at_level(logging.WARNING, logger="prvr.data.annotations"):
        records = read_tvr_jsonl(path, missing_video="skip")
    assert [r.query_id for r in records] == ["90200"] and "skipped 1 record(s)" in caplog.text
    assert read_tvr_query_texts(path) == {"90200": "Phoebe eats.", "11": "no video here"}
    with pytest.raises(ValueError, match="missing_video"):
        read_tvr_jsonl(path, missing_video="ignore")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("row", "pattern"),
    [
        ({"vid_name": "v", "ts": [0, 1], "desc_id": 1}, r"missing key\(s\) \['desc'\]"),
        ({"vid_name": "v", "ts": [0, 1], "desc": "x"}, r"missing key\(s\) \['desc_id'\]"),
        ({"vid_name": "v", "ts": ["0", 1], "desc": "x", "desc_id": 1}, "start must be a number"),
        ({"vid_name": "v", "ts": [0, True], "desc": "x", "desc_id": 1}, "end must be a number"),
        ({"vid_name": "v", "ts": [0], "desc": "x", "desc_id": 1}, r"\[start, end\]"),
        ('{"vid_name": "v", "ts": [NaN, 1], "desc": "x", "desc_id": 1}', "start is NaN"),
        ({"vid_name": "v", "ts": [0, 1], "duration": -5, "desc": "x", "desc_id": 1}, "negative duration"),
        ({"vid_name": "v", "ts": [0, 1], "duration": 0, "desc": "x", "desc_id": 1}, "duration is 0"),
        ({"vid_name": "v", "ts": [0, 1], "desc": "   ", "desc_id": 1}, "desc is empty"),
        ({"vid_name": "", "ts": [0, 1], "desc": "x", "desc_id": 1}, "vid_name must be a non-empty string"),
        ({"vid_name": "v", "ts": [0, 1], "desc": "x", "desc_id": 90200}, "duplicate query id '90200'"),
        ('{"vid_name": "v", "ts": [0, 1], "desc": "x"', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_tvr_malformed_records(tmp_path: Path, row: Any, pattern: str) -> None:
    path = _write_jsonl(tmp_path / "bad.jsonl", [TVR_ROWS[0], row])
    with pytest.raises(ValueError, match=pattern) as info:
        read_tvr_jsonl(path)
    message = str(info.value)
    assert str(path) in message
    if "duplicate" not in pattern:
        assert "line 2" in message


def test_tvr_non_utf8_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(json.dumps(TVR_ROWS[0]).encode() + b'\n{"desc": "caf\xe9", "desc_id": 3}\n')
    with pytest.raises(ValueError, match=r"line 2: not valid UTF-8"):
        read_tvr_jsonl(path)
    with pytest.raises(FileNotFoundError):
        read_tvr_jsonl(tmp_path / "absent.jsonl")


def test_read_tvr_durations(tmp_path: Path) -> None:
    path = tmp_path / "dur.json"
    path.write_text(json.dumps({"val": {"a": [61.46, 0], "b": [12, 1]}, "train": {}}))
    assert read_tvr_durations(path, "val") == {"a": 61.46, "b": 12.0}
    with pytest.raises(ValueError, match=r"no split 'test'.*\['train', 'val'\]"):
        read_tvr_durations(path, "test")
    path.write_text(json.dumps({"val": {"a": [-1, 0]}}))
    with pytest.raises(ValueError, match="video 'a': negative duration"):
        read_tvr_durations(path, "val")
    path.write_text(json.dumps({"val": {"a": 5}}))
    with pytest.raises(ValueError, match=r"expected \[duration, idx\]"):
        read_tvr_durations(path, "val")


# ----------------------------------------------------------------------------------------------------------------
# Charades-STA


def test_read_charades_sta(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "charades_sta_train.txt"
    path.write_text(
        "AO8RW 0.0 6.9##a person is putting a book on a shelf.\n"
        "Y6R7T 20.8 30.0##person begins to play on a phone.\r\n"
        "\n"
        "Y6R7T 20.8 30.0## person start playing on their phone. \n"
        "AKKWU 38.0 13.0##person opens the cabinet.\n"
    )
    with caplog.at_level(logging.WARNING, logger="prvr.data.annotations"):
        records = read_charades_sta(path)
    assert records == [
        QueryRecord("AO8RW#enc#0", "AO8RW", "a person is putting a book on a shelf.", ((0.0, 6.9),)),
        QueryRecord("Y6R7T#enc#0", "Y6R7T", "person begins to play on a phone.", ((20.8, 30.0),)),
        QueryRecord("Y6R7T#enc#1", "Y6R7T", "person start playing on their phone.", ((20.8, 30.0),)),
        QueryRecord("AKKWU#enc#0", "AKKWU", "person opens the cabinet.", ((13.0, 38.0),)),
    ]
    assert "swapped 1 reversed window(s)" in caplog.text
    with caplog.at_level(logging.WARNING, logger="prvr.data.annotations"):
        clamped = read_charades_sta(path, durations={"AO8RW": 5.0, "Y6R7T": 40.0, "AKKWU": 30.0})
    assert [r.windows for r in clamped] == [((0.0, 5.0),), ((20.8, 30.0),), ((20.8, 30.0),), ((13.0, 30.0),)]
    assert [r.duration for r in clamped] == [5.0, 40.0, 40.0, 30.0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="prvr.data.annotations"):
        partial = read_charades_sta(path, durations={"AO8RW": 10.0})
    assert [r.duration for r in partial] == [10.0, None, None, None]
    assert "2 video(s) have no entry in the durations table" in caplog.text


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ("AO8RW 0.0 6.9 a person without separator", "found no '##'"),
        ("AO8RW 0.0##text", r"expected 'VIDEO_ID START END'"),
        ("AO8RW abc 6.9##text", "start 'abc' is not a number"),
        ("AO8RW 0.0 nan##text", "end is NaN"),
        ("AO8RW 0.0 inf##text", "end is infinite"),
        ("AO8RW 0.0 6.9##   ", "sentence is empty"),
        ("AO#8RW 0.0 6.9##text", "contains '#'"),
    ],
)
def test_charades_malformed_lines(tmp_path: Path, line: str, pattern: str) -> None:
    path = tmp_path / "c.txt"
    path.write_text("Y6R7T 20.8 30.0##fine.\n" + line + "\n")
    with pytest.raises(ValueError, match=pattern) as info:
        read_charades_sta(path)
    assert f"{path}, line 2" in str(info.value)


def test_charades_non_utf8_and_bad_durations(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"Y6R7T 20.8 30.0##fine.\nAO8RW 0.0 6.9##caf\xe9\n")
    with pytest.raises(ValueError, match=r"line 2: not valid UTF-8"):
        read_charades_sta(path)
    path.write_text("Y6R7T 20.8 30.0##fine.\n")
    with pytest.raises(ValueError, match="negative duration"):
        read_charades_sta(path, durations={"Y6R7T": -3.0})


# ----------------------------------------------------------------------------------------------------------------
# ActivityNet Captions


ANET_DATA = {
    "v_a": {"duration": 100.0, "timestamps": [[0, 40.5], [30, 120.0], [60, 50]],
            "sentences": [" A man speaks.", "He jumps. ", "  Reversed."]},
    "v_b": {"duration": 9.57, "timestamps": [[4.97, 4.97]], "sentences": ["Zero length."]},
}


def test_read_activitynet_captions(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "val_1.json"
    path.write_text(json.dumps(ANET_DATA))
    with caplog.at_level(logging.WARNING, logger="prvr.data.annotations"):
        records = read_activitynet_captions(path)
    assert records == [
        QueryRecord("v_a#enc#0", "v_a", "A man speaks.", ((0.0, 40.5),), 100.0),
        QueryRecord("v_a#enc#1", "v_a", "He jumps.", ((30.0, 100.0),), 100.0),
        QueryRecord("v_a#enc#2", "v_a", "Reversed.", ((50.0, 60.0),), 100.0),
        QueryRecord("v_b#enc#0", "v_b", "Zero length.", ((4.97, 4.97),), 9.57),
    ]
    assert "swapped 1 reversed window(s)" in caplog.text and "clamped 1 window(s)" in caplog.text
    # the ids follow the caption-file convention, so the records can be written as a caption file as they are
    write_captions(tmp_path / "c.caption.txt", records)
    assert [r.query_id for r in read_captions(tmp_path / "c.caption.txt")] == [r.query_id for r in records]


def _anet_variant(**changes: Any) -> dict[str, Any]:
    entry = {"duration": 10.0, "timestamps": [[0, 1], [2, 3]], "sentences": ["one", "two"]}
    entry.update(changes)
    for key, value in list(entry.items()):
        if value is None:
            del entry[key]
    return {"v_ok": {"duration": 5.0, "timestamps": [[0, 1]], "sentences": ["fine"]}, "v_bad": entry}


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (_anet_variant(duration=None), r"video 'v_bad': missing key\(s\) \['duration'\]"),
        (_anet_variant(sentences=None), r"missing key\(s\) \['sentences'\]"),
        (_anet_variant(duration=-2.0), "negative duration"),
        (_anet_variant(duration="10"), "duration must be a number"),
        (_anet_variant(timestamps=[[0, 1]]), "1 timestamps but 2 sentences"),
        (_anet_variant(timestamps=[[0, 1], ["a", 3]]), "sentence 1: start must be a number"),
        (_anet_variant(timestamps=[[0, 1], [2, 3, 4]]), r"sentence 1: a window must be \[start, end\]"),
        (_anet_variant(sentences=["one", " "]), "sentence 1: sentence is empty"),
        (_anet_variant(sentences=["one", 2]), "sentence must be a string"),
        ([1, 2], "expected {video_id"),
    ],
)
def test_activitynet_malformed(tmp_path: Path, data: Any, pattern: str) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=pattern) as info:
        read_activitynet_captions(path)
    assert str(path) in str(info.value)


def test_activitynet_nan_non_utf8_and_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('{"v": {"duration": 5, "timestamps": [[0, NaN]], "sentences": ["x"]}}')
    with pytest.raises(ValueError, match="video 'v', sentence 0: end is NaN"):
        read_activitynet_captions(path)
    path.write_text('{"v": {"duration": NaN, "timestamps": [[0, 1]], "sentences": ["x"]}}')
    with pytest.raises(ValueError, match="duration is NaN"):
        read_activitynet_captions(path)
    path.write_bytes(b'{"v": {"duration": 5,\n "timestamps": [[0, 1]],\n "sentences": ["caf\xe9"]}}')
    with pytest.raises(ValueError, match=r"a\.json, line 3: not valid UTF-8"):
        read_activitynet_captions(path)
    path.write_text('{"v": {"duration": 5,\n "timestamps": [[0, 1]]')
    with pytest.raises(ValueError, match=r"line 2: not valid JSON"):
        read_activitynet_captions(path)


# ----------------------------------------------------------------------------------------------------------------
# QVHighlights


def test_read_qvhighlights(tmp_path: Path) -> None:
    rows = [
        {"qid": 2579, "query": "A girl cooks.", "duration": 150, "vid": "NUsG9BgSes0_210.0_360.0",
         "relevant_windows": [[82, 150], [0, 4]], "relevant_clip_ids": [41], "saliency_scores": [[1, 1, 2]]},
        {"qid": 3158, "query": "A boat.", "duration": 150, "vid": "_6hnl_BrFvs_360.0_510.0"},
    ]
    records = read_qvhighlights_jsonl(_write_jsonl(tmp_path / "q.jsonl", rows))
    assert records == [
        QueryRecord("2579", "NUsG9BgSes0_210.0_360.0", "A girl cooks.", ((82.0, 150.0), (0.0, 4.0)), 150.0),
        QueryRecord("3158", "_6hnl_BrFvs_360.0_510.0", "A boat.", (), 150.0),
    ]


@pytest.mark.parametrize(
    ("row", "pattern"),
    [
        ({"qid": 1, "query": "x", "duration": 150}, r"missing key\(s\) \['vid'\]"),
        ({"qid": 1, "query": "x", "vid": "v", "duration": -1}, "negative duration"),
        ({"qid": 1, "query": "x", "vid": "v", "duration": 150, "relevant_windows": [[0, "2"]]}, "end must be a number"),
        ({"qid": 1, "query": "x", "vid": "v", "duration": 150, "relevant_windows": "0 2"}, "must be a list"),
        ({"qid": None, "query": "x", "vid": "v", "duration": 150}, "qid must be"),
        ({"qid": 2579, "query": "x", "vid": "v", "duration": 150}, "duplicate query id '2579'"),
    ],
)
def test_qvhighlights_malformed(tmp_path: Path, row: dict[str, Any], pattern: str) -> None:
    good = {"qid": 2579, "query": "ok", "vid": "v", "duration": 150, "relevant_windows": [[0, 2]]}
    path = _write_jsonl(tmp_path / "q.jsonl", [good, row])
    with pytest.raises(ValueError, match=pattern) as info:
        read_qvhighlights_jsonl(path)
    assert str(path) in str(info.value)


# ----------------------------------------------------------------------------------------------------------------
# dispatch


def test_read_annotations_dispatch(tmp_path: Path) -> None:
    tvr = _write_jsonl(tmp_path / "tvr_val_release.jsonl", TVR_ROWS[:1])
    qvh = _write_jsonl(tmp_path / "highlight_val.jsonl",
                       [{"qid": 1, "query": "q", "vid": "v", "duration": 10, "relevant_windows": [[0, 2]]}])
    charades = tmp_path / "charades_sta_test.txt"
    charades.write_text("AO8RW 0.0 6.9##a person.\n")
    anet = tmp_path / "val_2.json"
    anet.write_text(json.dumps(ANET_DATA))
    captions = tmp_path / "anetval.caption.txt"
    captions.write_text("v_a#enc#0 A man speaks.\n")
    durations = tmp_path / "tvr_video2dur_idx.json"
    durations.write_text(json.dumps({"val": {"a": [1.0, 0]}}))
    expected = {tvr: "tvr", qvh: "qvhighlights", charades: "charades", anet: "activitynet", captions: "captions"}
    for path, fmt in expected.items():
        assert detect_format(path) == fmt
        assert read_annotations(path) == read_annotations(path, fmt=fmt)  # type: ignore[arg-type]
    assert read_annotations(tvr)[0].query_id == "90200"
    assert read_annotations(captions) == [QueryRecord("v_a#enc#0", "v_a", "A man speaks.")]
    with pytest.raises(ValueError, match="read_tvr_durations"):
        read_annotations(durations)
    with pytest.raises(ValueError, match="unknown annotation format 'srt'"):
        read_annotations(tvr, fmt="srt")  # type: ignore[arg-type]
    other = tmp_path / "notes.csv"
    other.write_text("a,b\n")
    with pytest.raises(ValueError, match="pass fmt="):
        read_annotations(other)
    odd = _write_jsonl(tmp_path / "odd.jsonl", [{"foo": 1}])
    with pytest.raises(ValueError, match="neither a TVR"):
        read_annotations(odd)
    with pytest.raises(FileNotFoundError):
        read_annotations(tmp_path / "absent.jsonl")


def test_tvr_records_become_caption_files(tmp_path: Path) -> None:
    records = read_tvr_jsonl(_write_jsonl(tmp_path / "t.jsonl", TVR_ROWS))
    with pytest.raises(ValueError, match="with_caption_ids"):
        write_captions(tmp_path / "t.caption.txt", records)
    write_captions(tmp_path / "t.caption.txt", with_caption_ids(records))
    assert [r.query_id for r in read_captions(tmp_path / "t.caption.txt")] == [
        "friends_s01e03_seg02_clip_19#enc#0", "castle_s01e01_seg02_clip_20#enc#0", "castle_s01e01_seg02_clip_20#enc#1"
    ]


# ----------------------------------------------------------------------------------------------------------------
# real files (skipped when /work/shared/data is absent)


@_needs(TVR / "tvr_val_release.jsonl", TVR / "tvr_video2dur_idx.json")
def test_real_tvr_val() -> None:
    records = read_tvr_jsonl(TVR / "tvr_val_release.jsonl")
    assert len(records) == 10_895 and len({r.video_id for r in records}) == 2_179
    first = records[0]
    text = "Phoebe puts one of her ponytails in her mouth."
    assert first == QueryRecord("90200", "friends_s01e03_seg02_clip_19", text, ((16.48, 33.87),), 61.46)
    assert all(len(r.windows) == 1 and 0 <= r.start <= r.end <= r.duration for r in records)  # type: ignore[operator]
    durations = read_tvr_durations(TVR / "tvr_video2dur_idx.json", "val")
    assert len(durations) == 2_179 and set(durations) == {r.video_id for r in records}
    assert all(durations[r.video_id] == r.duration for r in records)
    sizes = {split: len(read_tvr_durations(TVR / "tvr_video2dur_idx.json", split))
             for split in ("train", "test_public", "test_challenge")}
    assert sizes == {"train": 17_435, "test_public": 1_089, "test_challenge": 1_090}


@_needs(TVR / "tvr_test_public_release.jsonl")
def test_real_tvr_test_public_has_no_videos() -> None:
    path = TVR / "tvr_test_public_release.jsonl"
    with pytest.raises(ValueError, match="no 'vid_name'"):
        read_tvr_jsonl(path)
    assert read_tvr_jsonl(path, missing_video="skip") == []
    texts = read_tvr_query_texts(path)
    assert len(texts) == 5_445
    assert texts["107711"] == "Monica hands Rachel a purple gift bag with red paper."  # trailing space stripped


def _naive_charades(path: Path) -> list[tuple[str, float, float, str]]:
    pattern = re.compile(r"^(\S+) (\S+) (\S+)##(.*)$")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line:
            video, start, end, text = pattern.match(line).groups()  # type: ignore[union-attr]
            lo, hi = sorted((float(start), float(end)))
            rows.append((video, lo, hi, text.strip()))
    return rows


@_needs(CHARADES / "charades_sta_train.txt", CHARADES / "charades_sta_test.txt")
@pytest.mark.parametrize(("split", "n_queries", "n_videos"), [("train", 12_408, 5_338), ("test", 3_720, 1_334)])
def test_real_charades(split: str, n_queries: int, n_videos: int) -> None:
    path = CHARADES / f"charades_sta_{split}.txt"
    records = read_charades_sta(path)
    assert len(records) == n_queries and len({r.video_id for r in records}) == n_videos
    assert len({r.query_id for r in records}) == n_queries
    assert [(r.video_id, r.start, r.end, r.text) for r in records] == _naive_charades(path)
    if split == "train":
        first = records[0]
        assert first == QueryRecord("AO8RW#enc#0", "AO8RW", "a person is putting a book on a shelf.", ((0.0, 6.9),))
        cabinet = [r for r in records if r.video_id == "AKKWU" and r.text == "person opens the cabinet."]
        assert cabinet[0].windows == ((13.0, 38.0),)  # "AKKWU 38.0 13.0" in the file: swapped


@pytest.fixture(scope="module")
def anet_raw() -> dict[str, dict[str, Any]]:
    return {name: json.loads((ANET / f"{name}.json").read_text()) for name in ("train", "val_1", "val_2")}


@_needs(ANET / "train.json", ANET / "val_1.json", ANET / "val_2.json")
@pytest.mark.parametrize(
    ("name", "n_sentences", "n_videos", "n_swapped", "n_clamped"),
    [("train", 37_421, 10_009, 2, 261), ("val_1", 10_541, 2_964, 0, 83), ("val_2", 10_318, 2_964, 0, 64)],
)
def test_real_activitynet(
    anet_raw: dict[str, Any], caplog: pytest.LogCaptureFixture,
    name: str, n_sentences: int, n_videos: int, n_swapped: int, n_clamped: int,
) -> None:
    with caplog.at_level(logging.WARNING, logger="prvr.data.annotations"):
        records = read_activitynet_captions(ANET / f"{name}.json")
    assert len(records) == n_sentences and len({r.video_id for r in records}) == n_videos
    assert f"swapped {n_swapped} reversed window(s)" in caplog.text
    assert f"clamped {n_clamped} window(s)" in caplog.text
    # naive reference: sorted, clamped windows and stripped sentences, in file order
    expected = [
        (f"{vid}#enc#{k}", sentence.strip(),
         tuple(min(max(t, 0.0), entry["duration"]) for t in sorted(window)), float(entry["duration"]))
        for vid, entry in anet_raw[name].items()
        for k, (window, sentence) in enumerate(zip(entry["timestamps"], entry["sentences"]))
    ]
    assert [(r.query_id, r.text, r.windows[0], r.duration) for r in records] == expected
    if name == "val_1":
        assert records[0].video_id == "v_--1DO2V4K74" and records[0].windows == ((0.0, 77.21),)
        assert records[0].duration == 211.53 and records[0].text.startswith("Several title screens")
    if name == "train":
        reversed_record = next(r for r in records if r.query_id == "v_rhOtqArO-3Y#enc#5")
        assert reversed_record.windows == ((150.31, 173.44),)  # [173.44, 150.31] in the file


@_needs(ANET / "val_1.json", ANET / "val_2.json")
def test_real_activitynet_val_sets_share_videos() -> None:
    val_1, val_2 = read_annotations(ANET / "val_1.json"), read_annotations(ANET / "val_2.json")
    assert {r.video_id for r in val_1} == {r.video_id for r in val_2}


@_needs(QVH / "highlight_val_release.jsonl", QVH / "highlight_test_release.jsonl", QVH / "highlight_test_with_gt.jsonl")
def test_real_qvhighlights() -> None:
    val = read_qvhighlights_jsonl(QVH / "highlight_val_release.jsonl")
    assert len(val) == 1_550 and len({r.video_id for r in val}) == 1_519
    assert val[0].query_id == "2579" and val[0].video_id == "NUsG9BgSes0_210.0_360.0" and val[0].duration == 150.0
    raw = [json.loads(line) for line in (QVH / "highlight_val_release.jsonl").read_text().splitlines()]
    assert [list(map(list, r.windows)) for r in val] == [row["relevant_windows"] for row in raw]
    test = read_annotations(QVH / "highlight_test_release.jsonl")
    assert len(test) == 1_542 and len({r.video_id for r in test}) == 1_529 and all(r.windows == () for r in test)
    with_gt = read_qvhighlights_jsonl(QVH / "highlight_test_with_gt.jsonl")
    assert [r.query_id for r in with_gt] == [r.query_id for r in test] and all(r.windows for r in with_gt)
