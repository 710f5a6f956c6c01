"""The query-text policy (prvr.query_text): one set of rules for the CLI, the Python API and the service."""

from __future__ import annotations

import json
import unicodedata

import pytest

from prvr.query_text import MAX_QUERY_CHARS, QueryTextError, clean_queries, clean_query


@pytest.mark.parametrize("text, expected", [
    ("a man plays the guitar", "a man plays the guitar"),
    ("  a man\tplays\n\nthe guitar  ", "a man plays the guitar"),
    ("a\u200bman\u200d plays\ufeff", "aman plays"),  # format characters vanish, they are not spaces
    ("a\x00man", "a man"),  # control characters become spaces
    ("cafe\u0301", "caf\u00e9"),  # NFC
    ("a\u00a0man\u2028plays", "a man plays"),  # Unicode spaces and line separators
])
def test_clean_query_normalises(text, expected):
    assert clean_query(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "\x00\x00", "\u200b\u200c\u200d\ufeff", "\t\n\r", "\u2060 \u00a0"])
def test_nothing_visible_is_refused_with_an_example(text):
    with pytest.raises(QueryTextError, match="is empty .* type a sentence"):
        clean_query(text)


@pytest.mark.parametrize("text", ["\ud800", "a man \udcff plays", "ok" + "\udfff"])
def test_lone_surrogates_are_refused_with_their_position(text):
    position = next(i for i, c in enumerate(text) if 0xD800 <= ord(c) <= 0xDFFF)
    with pytest.raises(QueryTextError, match=f"not valid Unicode .* at character {position}\\); send UTF-8"):
        clean_query(text)


def test_surrogate_escapes_of_undecodable_argv_bytes_are_refused():
    argv_text = b"a \xff\xfe man".decode("utf-8", "surrogateescape")  # how Python hands over bad argv bytes
    with pytest.raises(QueryTextError, match="not valid Unicode"):
        clean_query(argv_text)


@pytest.mark.parametrize("value", [None, 1, True, b"a man", ["a man"]])
def test_non_text_is_refused(value):
    with pytest.raises(QueryTextError, match=f"must be text, got {type(value).__name__}"):
        clean_query(value)


def test_the_length_limit_counts_cleaned_characters():
    assert clean_query("a" * MAX_QUERY_CHARS) == "a" * MAX_QUERY_CHARS
    assert clean_query("a" * MAX_QUERY_CHARS + " " * 1000 + "\u200b" * 1000) == "a" * MAX_QUERY_CHARS
    with pytest.raises(QueryTextError, match=f"{MAX_QUERY_CHARS + 1} characters long; at most {MAX_QUERY_CHARS}"):
        clean_query("a" * (MAX_QUERY_CHARS + 1))
    with pytest.raises(QueryTextError, match="4 characters long; at most 3"):
        clean_query("abcd", max_chars=3)


def test_clean_queries_names_the_failing_entry():
    assert clean_queries([" a ", "b\u200b"]) == ["a", "b"]
    with pytest.raises(QueryTextError, match=r"queries\[1\] is empty"):
        clean_queries(["a man", "\u200b"])
    with pytest.raises(QueryTextError, match="^the query is empty"):
        clean_queries(["  "])
    with pytest.raises(QueryTextError, match="no queries given"):
        clean_queries([])
    with pytest.raises(QueryTextError, match="expected a list"):
        clean_queries("a man")


def test_the_error_is_a_value_error():
    assert issubclass(QueryTextError, ValueError)


def test_every_codepoint_class_gives_a_clean_result_or_the_policy_error():
    # exhaustive over the BMP: the cleaned text never holds control, format, surrogate or non-space whitespace
    for code in range(0x10000):
        char = chr(code)
        try:
            cleaned = clean_query(f"x{char}y")
        except QueryTextError:
            assert 0xD800 <= code <= 0xDFFF
            continue
        assert all(unicodedata.category(c) not in {"Cc", "Cf", "Cs"} for c in cleaned)
        assert all(not c.isspace() or c == " " for c in cleaned)
        assert cleaned == unicodedata.normalize("NFC", cleaned)


# ------------------------------------------------------------------------------ the three entry points share it


BAD_TEXTS = [("\ud800 a dog", "not valid Unicode"), ("\u200b\u200b", "is empty"), ("\x00", "is empty"),
             ("a" * (MAX_QUERY_CHARS + 1), "characters long")]


@pytest.mark.parametrize("text, message", BAD_TEXTS)
def test_retriever_search_applies_the_policy(tiny_index, query_bert, text, message):
    from prvr.retriever import Retriever
    from prvr.text_encoders import TokenFeatureEncoder

    with Retriever.load(tiny_index, text_encoder=TokenFeatureEncoder(query_bert)) as retriever:
        with pytest.raises(QueryTextError, match=message):
            retriever.search(text, k=2)
        with pytest.raises(QueryTextError, match=r"queries\[1\]"):
            retriever.search(["a dog", text], k=2)
        assert retriever.search(" a\u200b dog\t", k=2) == retriever.search("a dog", k=2)


@pytest.mark.parametrize("text, message", BAD_TEXTS)
def test_the_service_answers_the_policy_with_a_json_422(service_index, text, message):
    from fastapi.testclient import TestClient

    from helpers import load_with_localizer
    from prvr.services.app import ServiceSettings, create_app

    app = create_app(ServiceSettings(index_dir=service_index["dir"], poll_interval_s=0), loader=load_with_localizer)
    def post(body):  # json.dumps escapes a lone surrogate as \ud800, as a browser's JSON.stringify does
        return client.post("/search", content=json.dumps(body), headers={"content-type": "application/json"})

    with TestClient(app) as client:
        for response in (post({"queries": [text]}), post({"queries": ["a dog", text]})):
            assert response.status_code == 422, response.text
            assert response.json()["error"]["code"] == "invalid_request"
            assert message in response.json()["error"]["message"]
        assert client.post("/search", json={"queries": ["a dog"], "k": True}).status_code == 422  # strict types
        assert client.post("/search", json={"queries": ["a dog"], "k": 2}).status_code == 200


def test_the_cli_answers_undecodable_argv_bytes_with_exit_1(tiny_index, query_bert, tmp_path):
    import os
    import subprocess
    import sys

    argv_text = b"a \xff dog".decode("utf-8", "surrogateescape")
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    script = ("import sys; from prvr.cli import main; "
              f"sys.argv = ['prvr', 'query', {argv_text!r}, '--index', {str(tiny_index)!r}, '--no-moments']; main()")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env, timeout=300,
                          text=True, errors="replace")
    assert done.returncode == 1, done.stderr
    assert "not valid Unicode" in done.stderr + done.stdout and "Traceback" not in done.stderr
