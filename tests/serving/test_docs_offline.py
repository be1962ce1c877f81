"""/docs and /redoc work on an offline network (issue 18): every asset they reference is served by the service."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("fastapi_offline")
from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def client(bundle: Path) -> TestClient:
    from multimodal_rec.serving.http import create_app
    from multimodal_rec.serving.recommender import Recommender

    return TestClient(create_app(Recommender.load(bundle)))


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_reference_no_external_url(client: TestClient, page: str) -> None:
    r = client.get(page)
    assert r.status_code == 200
    html = r.text
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.I), "the page loads something from the web"
    assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html) + re.findall(r"url: *'([^']+)'", html)
    scripts = [a for a in assets if a.endswith((".js", ".css"))]
    assert scripts, "no script or style found: the page changed shape"
    for a in assets:
        assert client.get(a).status_code == 200, a
