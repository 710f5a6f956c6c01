"""Fuzz the search service's request schemas: arbitrary JSON bodies and query strings never get a 5xx, and every
4xx is the service's JSON error shape."""

from __future__ import annotations

import json
from urllib.parse import quote_from_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import load_with_localizer

# any code point, lone surrogates included (json.dumps escapes them as a browser's JSON.stringify does)
ANY_TEXT = st.text(st.characters(blacklist_categories=()), max_size=60)
JSON_LEAVES = (st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False)
               | st.text(max_size=40))
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
BODIES = (JSON_VALUES
          | st.fixed_dictionaries({"queries": st.lists(ANY_TEXT, max_size=4)},
                                  optional={"k": JSON_VALUES, "moments": JSON_VALUES, "relevance": JSON_VALUES})
          | st.fixed_dictionaries({"queries": JSON_VALUES}))
PARAMS = st.dictionaries(st.sampled_from(["q", "k", "moments", "relevance", "extra"]), ANY_TEXT,
                         max_size=4)


@pytest.fixture(scope="module")
def client(service_index):
    from fastapi.testclient import TestClient

    from prvr.services.app import ServiceSettings, create_app

    app = create_app(ServiceSettings(index_dir=service_index["dir"], poll_interval_s=0), loader=load_with_localizer)
    with TestClient(app) as test_client:
        yield test_client


def _check(response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["code"] and error["message"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES)
def test_post_search_never_answers_5xx(client, body):
    _check(client.post("/search", content=json.dumps(body), headers={"content-type": "application/json"}))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=PARAMS)
def test_get_search_never_answers_5xx(client, params):
    # percent-encoded by hand: a lone surrogate becomes the bytes a broken client would send (%ED%A0%80, invalid
    # UTF-8), which the client library itself refuses to encode
    query = "&".join(f"{quote_from_bytes(name.encode())}={quote_from_bytes(value.encode('utf-8', 'surrogatepass'))}"
                     for name, value in params.items())
    _check(client.get("/search?" + query))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=80))
def test_undecodable_bodies_never_answer_5xx(client, raw):
    _check(client.post("/search", content=raw, headers={"content-type": "application/json"}))
