"""The HTTP service as a client meets it: JSON answers, one-line JSON errors (never a 500), metrics, no user data."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from live_server import free_port

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
from fastapi.testclient import TestClient

from multimodal_rec.errors import UserError
from multimodal_rec.serving import http as serve
from multimodal_rec.serving.recommender import Hit, Recommender
from multimodal_rec.serving.validation import MAX_EXCLUDE

SECRET = "my very private search about zebras"  # must never reach a log line


@pytest.fixture(scope="module")
def rec(bundle: Path) -> Recommender:
    return Recommender.load(bundle)


@pytest.fixture
def client(rec: Recommender) -> TestClient:
    with TestClient(serve.create_app(rec)) as c:  # a fresh app (and metrics registry) per test
        yield c


class StubRec:
    """Just enough of a Recommender: a catalog with missing values, and a search that crashes on demand."""

    def __init__(self) -> None:
        self.catalog = pd.DataFrame(
            {
                "video_id": ["a", "b"],
                "title": ["A red ball", None],
                "duration_s": [1.5, float("nan")],
                "added": pd.to_datetime(["2024-05-01", None]),
            }
        )
        self.video_ids = ["a", "b"]
        self.row_of = {"a": 0, "b": 1}

    def __len__(self) -> int:
        return 2

    def search(
        self,
        text: str,
        k: int = 10,
        filters: dict[str, Any] | None = None,
        *,
        min_score: float | None = None,
        mode: str | None = None,
    ) -> list[Hit]:
        if text == "crash":
            raise RuntimeError(f"internal failure while handling {SECRET}")
        moment = {"start_s": 0.0, "end_s": float("nan"), "score": 0.5}  # a video of unknown duration
        return [Hit("a", 0.5, 1, {"title": "A red ball", "duration_s": float("nan")}, moment=moment)]

    def query_info(self, text: str) -> dict[str, Any]:
        return {"unknown_tokens": 0, "tokens": 1, "in_vocabulary": True}


def _error(r: Any, status: int) -> str:
    """Assert a JSON error answer with ``status`` and return its one-line message."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert "\n" not in body["error"]
    return body["error"]


# --- happy paths -------------------------------------------------------------------------------------------------
def test_search(client: TestClient, rec: Recommender) -> None:
    r = client.post("/search", json={"query": "a red circle moving left", "k": 5})
    assert r.status_code == 200
    hits = r.json()["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert {"video_id", "score", "rank", "title"} <= set(hits[0])
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert [h["video_id"] for h in hits] == [h.video_id for h in rec.search("a red circle moving left", 5)]
    assert len(client.post("/search", json={"query": "red"}).json()["hits"]) == 10  # default k
    assert len(client.post("/search", json={"query": "red", "k": 1000}).json()["hits"]) == len(rec)  # k > catalog


def test_recommend_and_exclude(client: TestClient) -> None:
    history = ["a green ball moving up", "green dots rising"]
    r = client.post("/recommend", json={"history": history, "k": 4})
    assert r.status_code == 200
    hits = r.json()["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4] and {"video_id", "score"} <= set(hits[0])
    top = hits[0]["video_id"]
    again = client.post("/recommend", json={"history": history, "k": 4, "exclude": [top, "no-such-id"]}).json()
    ids = [h["video_id"] for h in again["hits"]]
    assert top not in ids and len(ids) == 4 and ids[:3] == [h["video_id"] for h in hits[1:4]]


def test_search_and_recommend_with_filters(client: TestClient, rec: Recommender) -> None:
    filters = {"color": ["red", "blue"], "duration_s": {"max": 2.0}}
    r = client.post("/search", json={"query": "a red circle", "k": 4, "filters": filters})
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert len(hits) == 4 and all(h["color"] in ("red", "blue") and h["duration_s"] <= 2.0 for h in hits)
    expected = rec.search("a red circle", 4, filters={"color": ["red", "blue"], "duration_s": (None, 2.0)})
    assert [h["video_id"] for h in hits] == [h.video_id for h in expected]
    open_range = {**filters, "duration_s": [None, 2.0]}  # JSON's way to write (None, 2.0): null is an open end
    r = client.post("/search", json={"query": "a red circle", "k": 4, "filters": open_range})
    assert r.status_code == 200 and [h["video_id"] for h in r.json()["hits"]] == [h.video_id for h in expected], r.text
    body = {"history": ["a green ball moving up"], "k": 3, "filters": {"shape": "circle"}}
    hits = client.post("/recommend", json=body).json()["hits"]
    assert len(hits) == 3 and {h["shape"] for h in hits} == {"circle"}


def test_recommend_skips_seen_videos_unless_asked(client: TestClient, rec: Recommender) -> None:
    seen = rec.video_ids[0]
    body = {"history": [seen, "a green ball moving up"], "k": 1000}
    assert seen not in {h["video_id"] for h in client.post("/recommend", json=body).json()["hits"]}
    again = client.post("/recommend", json={**body, "exclude_seen": False}).json()["hits"]
    assert seen in {h["video_id"] for h in again}


def test_explain(client: TestClient) -> None:
    history = ["a green ball moving up", "green dots rising", "a red square"]
    r = client.post("/explain", json={"history": history})
    assert r.status_code == 200
    att = r.json()["attention"]
    assert [a["text"] for a in att] == history
    assert all(set(a) == {"text", "weight"} for a in att)
    assert sum(a["weight"] for a in att) == pytest.approx(1.0, abs=1e-4)


def test_history_video_ids_are_read_as_titles(client: TestClient, rec: Recommender) -> None:
    """A served video id in a history is read as the video's title, and the answer says so; with history_ids an
    unknown id is reported in unknown_ids, not embedded as a word."""
    vid, title = rec.video_ids[3], str(rec.catalog["title"].iloc[3])
    body = {"history": ["a green ball moving up", vid], "k": 5, "exclude_seen": False}
    got = client.post("/recommend", json=body).json()
    want = client.post("/recommend", json={**body, "history": ["a green ball moving up", title]}).json()
    assert [h["video_id"] for h in got["hits"]] == [h["video_id"] for h in want["hits"]]
    assert (got["resolved"], got["unknown_ids"], want["resolved"]) == ({vid: title}, [], {})
    explained = client.post("/explain", json={"history": body["history"]}).json()
    assert [a["text"] for a in explained["attention"]] == ["a green ball moving up", title]
    assert (explained["resolved"], explained["unknown_ids"]) == ({vid: title}, [])
    ids = {"history": ["no-such-id", vid], "history_ids": True, "k": 5, "exclude_seen": False}
    got = client.post("/recommend", json=ids).json()
    alone = client.post("/recommend", json={**body, "history": [title]}).json()
    assert [h["video_id"] for h in got["hits"]] == [h["video_id"] for h in alone["hits"]]
    assert (got["resolved"], got["unknown_ids"]) == ({vid: title}, ["no-such-id"])
    explained = client.post("/explain", json={"history": ids["history"], "history_ids": True}).json()
    assert [a["text"] for a in explained["attention"]] == [title] and explained["unknown_ids"] == ["no-such-id"]
    for path in ("/recommend", "/explain"):
        message = _error(client.post(path, json={"history": ["no-such-id"], "history_ids": True}), 400)
        assert message.startswith("no usable history item") and "'no-such-id'" in message
        assert _error(client.post(path, json={"history": ["a"], "history_ids": 1}), 422) == (
            "history_ids: must be true or false"
        )


def test_video_row(client: TestClient, rec: Recommender) -> None:
    vid = rec.video_ids[3]
    r = client.get(f"/videos/{vid}")
    assert r.status_code == 200
    row = r.json()
    assert row["video_id"] == vid
    assert set(row) == set(rec.catalog.columns)
    assert row["title"] == rec.catalog.iloc[3]["title"]


def test_healthz_docs_openapi(client: TestClient, rec: Recommender) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "videos": len(rec)}
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/recommend", "/explain", "/videos/{video_id}", "/healthz", "/metrics"} <= set(paths)


def test_metrics(client: TestClient, rec: Recommender) -> None:
    client.post("/search", json={"query": "a red circle", "k": 3})
    client.post("/search", json={"query": "", "k": 3})
    client.get("/videos/nope")
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'mmrec_http_requests_total{endpoint="/search",status="200"} 1.0' in text
    assert 'mmrec_http_requests_total{endpoint="/search",status="422"} 1.0' in text
    # the route template, never the raw path: bounded labels, and no looked-up ids
    assert 'mmrec_http_requests_total{endpoint="/videos/{video_id}",status="404"} 1.0' in text
    assert "nope" not in text
    assert 'mmrec_http_request_duration_seconds_count{endpoint="/search"} 2.0' in text
    assert f"mmrec_catalog_videos {float(len(rec))}" in text


def test_two_apps_in_one_process(rec: Recommender) -> None:
    a, b = TestClient(serve.create_app(rec)), TestClient(serve.create_app(rec))  # no registry collision
    a.post("/search", json={"query": "red"})
    assert 'endpoint="/search"' in a.get("/metrics").text
    assert 'endpoint="/search"' not in b.get("/metrics").text


def test_concurrent_requests_match_sequential(client: TestClient, rec: Recommender) -> None:
    queries = ["a red circle", "blue squares", "a green ball moving up", "white triangles"] * 3
    expected = {q: [h.video_id for h in rec.search(q, 5)] for q in set(queries)}

    def ask(q: str) -> tuple[str, list[str]]:
        return q, [h["video_id"] for h in client.post("/search", json={"query": q, "k": 5}).json()["hits"]]

    with ThreadPoolExecutor(4) as pool:
        for q, ids in pool.map(ask, queries):
            assert ids == expected[q]


# --- bad requests: 4xx JSON, one line, never a 500 ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/search", {"query": ""}, 422, "query: must not be empty"),
        ("/search", {"query": "   \t\n"}, 422, "query: must not be blank"),
        ("/search", {"query": "x" * 10_001}, 422, "query: must have at most 1000 characters"),
        ("/search", {"query": "red", "k": 0}, 422, "k: must be >= 1"),
        ("/search", {"query": "red", "k": -3}, 422, "k: must be >= 1"),
        ("/search", {"query": "red", "k": 10**6}, 422, "k: must be <= 1000"),
        ("/search", {"query": "red", "k": "ten"}, 422, "k: must be an integer"),
        ("/search", {"query": "red", "k": "10"}, 422, "k: must be an integer"),  # strict: no string coercion
        ("/search", {"query": "red", "k": 2.5}, 422, "k: must be an integer"),
        ("/search", {"query": "red", "k": True}, 422, "k: must be an integer"),
        ("/search", {"query": 5}, 422, "query: must be a string"),
        ("/search", {"query": ["red"]}, 422, "query: must be a string"),
        ("/search", {}, 422, "query: is required"),
        ("/search", {"query": "red", "kk": 3}, 422, "kk: is not a known field"),
        ("/search", [1, 2], 422, "body: must be a JSON object"),
        ("/search", "red", 422, "body: must be a JSON object"),
        ("/recommend", {"history": []}, 422, "history: must not be empty"),
        ("/recommend", {"history": ["red"] * 501}, 422, "history: must have at most 500 items"),
        ("/recommend", {"history": "red balls"}, 422, "history: must be a list"),
        ("/recommend", {"history": ["red", " "]}, 422, "history[1]: must not be blank"),
        ("/recommend", {"history": ["red", ""]}, 422, "history[1]: must not be empty"),
        ("/recommend", {"history": ["red", 7]}, 422, "history[1]: must be a string"),
        ("/recommend", {"history": ["x" * 1001]}, 422, "history[0]: must have at most 1000 characters"),
        ("/recommend", {"history": ["red"], "k": 0}, 422, "k: must be >= 1"),
        ("/recommend", {"history": ["red"], "exclude": "v1"}, 422, "exclude: must be a list"),
        ("/recommend", {"history": ["red"], "exclude": ["v"] * 10_001}, 422, "exclude: must have at most 10000 items"),
        ("/search", {"query": "red", "filters": ["color"]}, 422, "filters: must be a JSON object"),
        ("/recommend", {"history": ["red"], "exclude_seen": "no"}, 422, "exclude_seen: must be true or false"),
        ("/explain", {"history": []}, 422, "history: must not be empty"),
        ("/explain", {"history": ["red"] * 501}, 422, "history: must have at most 500 items"),
        ("/explain", {}, 422, "history: is required"),
    ],
)
def test_bad_json_fields(client: TestClient, path: str, body: Any, status: int, message: str) -> None:
    assert _error(client.post(path, json=body), status) == message


@pytest.mark.parametrize(
    ("filters", "status", "message"),
    [
        ({"colour": "red"}, 400, "unknown filter column 'colour' (known: video_id, path, title,"),
        ({"color": {"min": 1}}, 400, "filter 'color': a range needs a numeric or date column, 'color' holds text"),
        ({"duration_s": "long"}, 400, "filter 'duration_s': expected a number, got str 'long'"),
        ({"duration_s": {"max": [1]}}, 400, "filter 'duration_s': expected a number, got list"),
        ({"duration_s": {"lo": 1}}, 400, "filter 'duration_s': a range object has keys min and/or max"),
        ({"duration_s": {"min": 9, "max": 1}}, 400, "filter 'duration_s': empty range"),
        ({"color": [[1]]}, 400, "filter 'color': expected a string, got list"),
        ({"color": None}, 400, "filter 'color': null is not a value to filter on"),
        ({f"c{i}": 1 for i in range(51)}, 422, "filters: must have at most 50 items"),
    ],
)
def test_bad_filters_are_4xx(client: TestClient, filters: dict[str, Any], status: int, message: str) -> None:
    for path, body in (("/search", {"query": "red"}), ("/recommend", {"history": ["red"]})):
        assert _error(client.post(path, json={**body, "filters": filters}), status).startswith(message)


def test_exclude_cap_is_a_one_line_4xx(rec: Recommender) -> None:
    """Past MAX_EXCLUDE (the Recommender's cap, also the request model's) the answer is a 4xx, not work."""
    c = TestClient(serve.create_app(rec))
    body = {"history": ["a green ball moving up"], "k": 2, "exclude": [f"x{i}" for i in range(MAX_EXCLUDE + 1)]}
    assert _error(c.post("/recommend", json=body), 422) == f"exclude: must have at most {MAX_EXCLUDE} items"
    with pytest.raises(UserError, match=f"exclude may list at most {MAX_EXCLUDE} video ids"):
        rec.recommend(body["history"], 2, exclude=body["exclude"])
    r = c.post("/recommend", json={**body, "exclude": body["exclude"][:MAX_EXCLUDE]})
    assert r.status_code == 200 and len(r.json()["hits"]) == 2


ACCEPTED_FILTERS = [
    None,
    {"title": "A red ball"},
    {"title": ["a", "b"], "duration_s": 1.5},
    {"duration_s": [None, 2.0]},
    {"duration_s": [1, None]},
    {"duration_s": {"max": 60}},
    {"duration_s": {"min": 1, "max": None}},
    {"added": {"min": "2024-01-01"}},
]
REJECTED_FILTERS = [
    ["title"],
    {"title": None},
    {"title": []},
    {"title": [[1]]},
    {"title": [None, 1, 2]},
    {"title": {"a": 1}},
    {"duration_s": {"lo": 1}},
    {"duration_s": {"min": None}},
    {"duration_s": [None, None]},
]


def test_openapi_schema_says_what_the_handler_accepts() -> None:
    """k: 3.0 is the integer 3 in JSON (schema and handler agree); filters: the schema's shapes are the handler's."""
    jsonschema = pytest.importorskip("jsonschema")
    from multimodal_rec.serving.filters import filter_mask

    c = TestClient(serve.create_app(StubRec()))
    props = c.get("/openapi.json").json()["components"]["schemas"]["SearchRequest"]["properties"]
    assert props["k"]["type"] == "integer"
    assert c.post("/search", json={"query": "red", "k": 3.0}).status_code == 200
    assert _error(c.post("/search", json={"query": "red", "k": 3.5}), 422) == "k: must be an integer"
    schema = jsonschema.Draft202012Validator(props["filters"])
    catalog = StubRec().catalog
    for filters in ACCEPTED_FILTERS:
        assert schema.is_valid(filters), filters
        filter_mask(catalog, filters)
    for filters in REJECTED_FILTERS:
        assert not schema.is_valid(filters), filters
        with pytest.raises(UserError):
            filter_mask(catalog, filters)  # type: ignore[arg-type]


def test_several_problems_in_one_line(client: TestClient) -> None:
    msg = _error(client.post("/search", json={"query": " ", "k": 0}), 422)
    assert msg == "query: must not be blank; k: must be >= 1"


@pytest.mark.parametrize(
    ("content", "content_type", "status", "message"),
    [
        (b'{"query": "red", ', "application/json", 400, "malformed JSON body"),
        (b"{'query': 'red'}", "application/json", 400, "malformed JSON body"),
        (b"\xff\xfe\xfa", "application/json", 400, ""),
        (b"", "application/json", 422, "body: is required"),
        # without a JSON content-type FastAPI does not parse the body: say so (was "body: must be a JSON object")
        (b"query=red", "application/x-www-form-urlencoded", 415, "unsupported content-type 'application/x-www-form"),
        (b'{"query": "red"}', "text/plain", 415, "unsupported content-type 'text/plain': send the body as JSON with"),
        (
            b'{"query": "red"}',
            None,
            415,
            "no content-type header: send the body as JSON with content-type: application",
        ),
    ],
)
def test_malformed_bodies_are_4xx(
    client: TestClient, content: bytes, content_type: str | None, status: int, message: str
) -> None:
    for path in ("/search", "/recommend", "/explain"):
        headers = {"content-type": content_type} if content_type else {}
        r = client.post(path, content=content, headers=headers)
        assert message in _error(r, status)


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/vnd.api+json"])
def test_json_content_types_with_parameters_or_suffix(client: TestClient, content_type: str) -> None:
    r = client.post("/search", content=b'{"query": "red", "k": 2}', headers={"content-type": content_type})
    assert r.status_code == 200 and len(r.json()["hits"]) == 2


def test_unknown_video_route_and_method(client: TestClient) -> None:
    assert _error(client.get("/videos/no-such-video"), 404) == "unknown video id 'no-such-video'"
    _error(client.get("/nowhere"), 404)
    r = client.get("/search")
    _error(r, 405)
    assert "POST" in r.headers["allow"]


# --- robustness and privacy ----------------------------------------------------------------------------------------
def test_missing_catalog_values_are_json_null() -> None:
    c = TestClient(serve.create_app(StubRec()))
    assert c.get("/videos/b").json() == {"video_id": "b", "title": None, "duration_s": None, "added": None}
    assert c.get("/videos/a").json()["added"].startswith("2024-05-01")
    hit = c.post("/search", json={"query": "red"}).json()["hits"][0]
    assert hit["duration_s"] is None and hit["moment"] == {"start_s": 0.0, "end_s": None, "score": 0.5}  # NaN: null


def test_crash_is_a_json_500_and_logs_no_user_data(caplog: pytest.LogCaptureFixture) -> None:
    c = TestClient(serve.create_app(StubRec()), raise_server_exceptions=True)
    with caplog.at_level(logging.DEBUG):
        c.post("/search", json={"query": SECRET})
        c.post("/search", json={"query": SECRET, "k": 0})
        r = c.post("/search", json={"query": "crash"})
    assert _error(r, 500) == "internal server error"
    assert SECRET not in r.text
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "POST /search 200" in logged and "POST /search 422" in logged and "POST /search 500" in logged
    assert "RuntimeError" in logged
    assert SECRET not in logged and "zebras" not in logged
    assert 'status="500"' in c.get("/metrics").text


def test_bad_limits_refused() -> None:
    with pytest.raises(UserError, match="max_k"):
        serve.create_app(StubRec(), max_k=10**6)  # the Recommender refuses k > 1000
    with pytest.raises(UserError, match="max_history"):
        serve.create_app(StubRec(), max_history=0)
    for name in ("max_query_chars", "max_history"):  # the Recommender refuses more than its own caps
        with pytest.raises(UserError, match=name):
            serve.create_app(StubRec(), **{name: 10**4})


def test_custom_limits() -> None:
    c = TestClient(serve.create_app(StubRec(), max_query_chars=5, max_history=2, max_k=3))
    assert _error(c.post("/search", json={"query": "abcdef"}), 422) == "query: must have at most 5 characters"
    assert _error(c.post("/search", json={"query": "abc", "k": 4}), 422) == "k: must be <= 3"
    assert _error(c.post("/explain", json={"history": ["a", "b", "c"]}), 422) == "history: must have at most 2 items"


# --- without the serve extra --------------------------------------------------------------------------------------
def test_without_the_serve_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("fastapi", "uvicorn", "prometheus_client"):
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError
    with pytest.raises(UserError) as e:
        serve.create_app(StubRec())
    assert str(e.value) == "the HTTP service needs the serve extra: pip install -e '.[serve]'"
    with pytest.raises(UserError, match="serve extra"):
        serve.run_server("no-such-bundle")


def test_module_imports_without_fastapi() -> None:
    code = (
        "import sys\n"
        "for m in ('fastapi', 'uvicorn', 'prometheus_client', 'starlette', 'pydantic'): sys.modules[m] = None\n"
        "import multimodal_rec.serving.http as s\n"
        "from multimodal_rec.errors import UserError\n"
        "try:\n    s.create_app(None)\nexcept UserError as e:\n    print(e)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "the HTTP service needs the serve extra: pip install -e '.[serve]'"


# --- run_server ---------------------------------------------------------------------------------------------------
def test_run_server_binds_loopback_without_access_log(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uvicorn = pytest.importorskip("uvicorn")
    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    monkeypatch.setattr(serve, "check_port_free", lambda host, port: None)  # port 8000 may be busy on this machine
    serve.run_server(str(bundle))
    ((app, kw),) = calls
    # keep-alive longer than clients' usual 5 s idle expiry: no request is sent on a connection being closed
    assert kw == {"host": "127.0.0.1", "port": 8000, "access_log": False, "timeout_keep_alive": 30}
    assert TestClient(app).get("/healthz").json()["status"] == "ok"


def test_run_server_workers_fork_from_one_load(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Several workers: the bundle is loaded once, with one torch thread (no pool a fork would break), and each worker
    builds its app over that one Recommender; this process gets its torch threads back when the server stops."""
    pytest.importorskip("uvicorn")
    import torch

    from multimodal_rec.serving import prefork

    calls: list[tuple[Any, ...]] = []

    def fake(rec: Any, make_app: Any, workers: int, threads: tuple[int, int], options: dict[str, Any]) -> None:
        calls.append((rec, make_app, workers, threads, options, torch.get_num_threads()))

    monkeypatch.setattr(prefork, "serve_forked", fake)
    monkeypatch.setattr(serve, "check_port_free", lambda host, port: None)
    before = torch.get_num_threads()
    serve.run_server(str(bundle), host="0.0.0.0", port=9000, workers=2)
    ((rec, make_app, workers, threads, kw, loaded_with),) = calls
    assert isinstance(rec, Recommender) and workers == 2 and loaded_with == 1
    assert threads == (max(1, (os.cpu_count() or 1) // 2),) * 2
    assert kw["host"] == "0.0.0.0" and kw["port"] == 9000 and kw["access_log"] is False
    assert torch.get_num_threads() == before
    assert TestClient(make_app(rec)).get("/healthz").json()["videos"] == len(rec) > 0


def test_several_workers_without_fork_is_one_line(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows has no os.fork: several workers are refused at start, before the bundle is loaded."""
    pytest.importorskip("uvicorn")
    monkeypatch.delattr(os, "fork")
    monkeypatch.setattr(serve, "check_port_free", lambda host, port: None)
    monkeypatch.setattr(Recommender, "load", lambda *a, **k: pytest.fail("loaded"))
    with pytest.raises(UserError, match="no fork"):
        serve.run_server(str(bundle), port=9000, workers=2)


@pytest.mark.parametrize(("kw", "message"), [({"workers": 0}, "workers"), ({"port": 70000}, "port")])
def test_run_server_bad_arguments(kw: dict[str, Any], message: str) -> None:
    pytest.importorskip("uvicorn")
    with pytest.raises(UserError, match=message):
        serve.run_server("no-such-bundle", **kw)


def test_run_server_missing_bundle(tmp_path: Path) -> None:
    pytest.importorskip("uvicorn")
    with pytest.raises(UserError, match="not a bundle"):
        serve.run_server(str(tmp_path / "nope"))


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_on_a_port_in_use_fails_at_once(
    workers: int, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port in use is a one-line error (exit 2) before the bundle is read (was: load ~10 s, then exit 3)."""
    pytest.importorskip("uvicorn")
    from multimodal_rec.cli import main

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the bundle was read before the port was checked")

    monkeypatch.setattr(Recommender, "load", no_load)
    monkeypatch.setattr("multimodal_rec.bundle.read_manifest", no_load)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        argv = ["serve", "--bundle", str(tmp_path / "nope"), "--port", str(port), "--workers", str(workers)]
        code = main(argv)
    err = capsys.readouterr().err.strip()
    assert (
        code == 2
        and err
        == f"mmrec serve: error: cannot serve on 127.0.0.1:{port}: the port is already in use "
        "(stop that server or pick another --port)"
    )


def test_real_server_answers(bundle: Path) -> None:
    """One real uvicorn process on a free loopback port: healthz and a search over HTTP."""
    pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    port = free_port()
    code = f"from multimodal_rec.serving.http import run_server; run_server({str(bundle)!r}, port={port})"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
        while True:
            try:
                health = httpx.get(f"{url}/healthz", timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.5)
        assert health.json()["status"] == "ok"
        r = httpx.post(f"{url}/search", json={"query": "a red circle", "k": 3}, timeout=30)
        assert [h["rank"] for h in r.json()["hits"]] == [1, 2, 3]
        bad = httpx.post(f"{url}/search", content=b"{nope", headers={"content-type": "application/json"}, timeout=30)
        assert bad.status_code == 400 and "error" in json.loads(bad.text)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe\x00not utf-8",  # not UTF-8
        b'{"query": "\xc3\x28", "k": 3}',  # an invalid UTF-8 sequence inside a string
        b"[" * 100_000 + b"]" * 100_000,  # deeply nested
        b'{"query": "' + b"a" * 2_000_000 + b'", "k": 3}',  # huge, under the body cap
        b'{"query": "x", "k": 3',  # truncated
    ],
)
def test_malformed_bodies_are_one_line_4xx(client: TestClient, body: bytes) -> None:
    """Bad bytes anywhere (issue 19): a JSON 4xx naming the problem, never a 5xx, and the service answers after."""
    r = client.post("/search", content=body, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:200])
    err = r.json()["error"]
    assert isinstance(err, str) and err and "\n" not in err
    assert client.post("/search", json={"query": "a red circle", "k": 3}).status_code == 200
