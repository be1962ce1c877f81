"""POST /videos, DELETE /videos/{id}, POST /admin/snapshot (issue 19): the contract, auth, bad bodies, privacy."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from multimodal_rec.serving.http import create_app
from multimodal_rec.serving.live import LiveCatalog
from multimodal_rec.serving.recommender import Recommender
from multimodal_rec.serving.wal import read_log, wal_path

ADMIN, API = "s3cret-admin-token", "api-token-42"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
def live(bundle: Path, tmp_path: Path):
    out = tmp_path / "bundle"
    shutil.copytree(bundle, out)
    lc = LiveCatalog.open(out)
    yield lc
    lc.close()


@pytest.fixture
def client(live: LiveCatalog):
    with TestClient(create_app(live.rec, live=live, admin_token=ADMIN)) as c:
        yield c


def _emb(live: LiveCatalog, seed: int = 0) -> list[float]:
    return np.random.default_rng(seed).standard_normal(int(live.rec.embeddings.shape[1])).tolist()


def test_add_get_delete_snapshot(client: TestClient, live: LiveCatalog) -> None:
    first = next(iter(live.rec.row_of))
    body = {
        "videos": [
            {"video_id": "up1", "embedding": _emb(live, 1), "metadata": {"title": "An upload"}},
            {"video_id": first, "embedding": _emb(live, 2)},
        ]
    }
    r = client.post("/videos", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["added"] == ["up1"] and r.json()["skipped"][0]["video_id"] == first
    got = client.get("/videos/up1")
    assert got.status_code == 200 and got.json()["title"] == "An upload"  # at once
    assert client.delete("/videos/up1", headers=AUTH).status_code == 200
    assert client.get("/videos/up1").status_code == 404
    assert client.delete("/videos/up1", headers=AUTH).status_code == 404
    r = client.post("/admin/snapshot", headers=AUTH)
    assert r.status_code == 200 and r.json()["wal_seq"] == 2
    assert read_log(wal_path(live.rec.path))[1] == []


def test_writes_need_the_admin_token(client: TestClient, live: LiveCatalog) -> None:
    body = {"videos": [{"video_id": "x", "embedding": _emb(live)}]}
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": ADMIN},
        {"Authorization": f"Basic {ADMIN}"},
    ):
        r = client.post("/videos", json=body, headers=headers)
        assert r.status_code == 401 and "error" in r.json(), headers
        assert client.delete(f"/videos/{next(iter(live.rec.row_of))}", headers=headers).status_code == 401
        assert client.post("/admin/snapshot", headers=headers).status_code == 401
    assert "x" not in live.rec.row_of and read_log(wal_path(live.rec.path))[1] == []


def test_without_an_admin_token_writes_are_403_and_change_nothing(bundle: Path) -> None:
    rec = Recommender.load(bundle)
    n = len(rec)
    with TestClient(create_app(rec)) as c:
        vid = next(iter(rec.row_of))
        body = {"videos": [{"video_id": "x", "embedding": [0.1] * rec.embeddings.shape[1]}]}
        for r in (c.post("/videos", json=body), c.delete(f"/videos/{vid}"), c.post("/admin/snapshot")):
            assert r.status_code == 403 and "admin-token-file" in r.json()["error"]
        r = c.delete(f"/videos/{vid}", headers={"Authorization": "Bearer anything"})
        assert r.status_code == 403
    assert len(rec) == n


def test_api_token_protects_reads(live: LiveCatalog) -> None:
    app = create_app(live.rec, live=live, admin_token=ADMIN, api_token=API)
    vid = next(iter(live.rec.row_of))
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200  # liveness stays open
        for headers in ({}, {"Authorization": "Bearer nope"}):
            r = c.get(f"/videos/{vid}", headers=headers)
            assert r.status_code == 401 and "api token" in r.json()["error"]
            assert c.post("/search", json={"query": "a red circle"}, headers=headers).status_code == 401
        assert c.get(f"/videos/{vid}", headers={"Authorization": f"Bearer {API}"}).status_code == 200
        assert c.get(f"/videos/{vid}", headers=AUTH).status_code == 200  # the admin token reads too


@pytest.mark.parametrize(
    ("video", "status"),
    [
        ({"video_id": "n", "embedding": [0.5, 0.5]}, 400),  # wrong dimension
        ({"video_id": "a/b", "embedding": "DIM"}, 400),
        ({"video_id": "a\u0007b", "embedding": "DIM"}, 400),
        ({"video_id": "n", "embedding": "DIM", "metadata": {"nested": {"a": 1}}}, 422),
        ({"video_id": "n", "embedding": "DIM", "metadata": {"no_such_column": 1}}, 400),
        ({"video_id": "n", "embedding": "DIM", "path": "/etc/passwd"}, 400),
        ({"video_id": "n", "embedding": "DIM", "extra": 1}, 422),
        ({"video_id": "", "embedding": "DIM"}, 422),
    ],
)
def test_bad_videos_are_clear_4xx_and_change_nothing(client: TestClient, live: LiveCatalog, video, status) -> None:
    if video["embedding"] == "DIM":
        video = {**video, "embedding": _emb(live)}
    n = len(live.rec)
    r = client.post("/videos", json={"videos": [video]}, headers=AUTH)
    assert r.status_code == status, r.text
    assert isinstance(r.json()["error"], str) and len(live.rec) == n
    assert read_log(wal_path(live.rec.path))[1] == []


def test_nan_and_infinity_embeddings_are_refused(client: TestClient, live: LiveCatalog) -> None:
    d = int(live.rec.embeddings.shape[1])
    for bad in ("NaN", "Infinity", "-Infinity"):
        numbers = ", ".join([bad] + ["0.1"] * (d - 1))
        raw = '{"videos": [{"video_id": "n", "embedding": [' + numbers + "]}]}"
        r = client.post("/videos", content=raw, headers={**AUTH, "content-type": "application/json"})
        assert 400 <= r.status_code < 500 and "error" in r.json(), r.text
    assert "n" not in live.rec.row_of


def test_oversize_bodies_are_413(live: LiveCatalog) -> None:
    with TestClient(create_app(live.rec, live=live, admin_token=ADMIN, max_body=300)) as c:
        r = c.post("/videos", json={"videos": [{"video_id": "n", "embedding": _emb(live)}]}, headers=AUTH)
        assert r.status_code == 413 and "over 300 bytes" in r.json()["error"]

        def chunks():  # no content-length: the cap counts what arrives
            yield b'{"query": "'
            yield b"a" * 2000
            yield b'"}'

        r = c.post("/search", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.post("/search", json={"query": "a red circle"}).status_code == 200


def test_no_body_or_token_reaches_the_logs(client: TestClient, live: LiveCatalog, caplog) -> None:
    """At DEBUG, every logger: neither the token, the ids and titles written, nor a query shows up."""
    caplog.set_level(logging.DEBUG)
    body = {"videos": [{"video_id": "private-id-77", "embedding": _emb(live), "metadata": {"title": "Secret title"}}]}
    client.post("/videos", json=body, headers=AUTH)
    client.post("/videos", json=body, headers={"Authorization": "Bearer wrong-token-zz"})
    client.post("/search", json={"query": "my private query words"})
    client.delete("/videos/private-id-77", headers=AUTH)
    client.post("/admin/snapshot", headers=AUTH)
    served = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]  # not the test's client
    assert served
    text = "\n".join(r.getMessage() for r in served)
    for secret in (ADMIN, "wrong-token-zz", "private-id-77", "Secret title", "private query"):
        assert secret not in text
    assert "private-id-77" not in json.dumps(live.rec.info())  # sanity: removed and compacted


def test_openapi_lists_the_write_endpoints(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"post", "get"} <= set(paths["/videos"]) | {"get"} and "delete" in paths["/videos/{video_id}"]
    assert "post" in paths["/admin/snapshot"]


def test_writes_refuse_several_workers_and_bad_token_files(bundle: Path, tmp_path: Path, monkeypatch) -> None:
    """One line at start, before anything is loaded: writes need one process; a token file must hold a token."""
    from multimodal_rec.errors import UserError
    from multimodal_rec.serving import http

    monkeypatch.setattr(http, "check_port_free", lambda host, port: None)
    monkeypatch.delenv("MMREC_ADMIN_TOKEN", raising=False)
    token = tmp_path / "t"
    token.write_text(ADMIN)
    with pytest.raises(UserError, match="--workers 1"):
        http.run_server(str(bundle), workers=2, admin_token_file=str(token))
    monkeypatch.setenv("MMREC_ADMIN_TOKEN", ADMIN)
    with pytest.raises(UserError, match="--workers 1"):
        http.run_server(str(bundle), workers=2)
    token.write_text("  \n")
    with pytest.raises(UserError, match="is empty") as e:
        http.run_server(str(bundle), api_token_file=str(token))
    with pytest.raises(UserError, match="cannot read"):
        http.run_server(str(bundle), admin_token_file=str(tmp_path / "missing"))
    assert ADMIN not in str(e.value)


def test_add_by_path_over_http(client: TestClient, live: LiveCatalog, world: Path) -> None:
    import pandas as pd

    clip = str(world / pd.read_csv(world / "catalog.csv")["path"][1])
    body = {"videos": [{"video_id": "up1", "path": clip}, {"video_id": "up2", "path": "/no/such/file.mp4"}]}
    r = client.post("/videos", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["added"] == ["up1"] and [s["video_id"] for s in r.json()["skipped"]] == ["up2"]
    assert client.get("/videos/up1").status_code == 200 and client.get("/videos/up2").status_code == 404
