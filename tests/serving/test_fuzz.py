"""schemathesis against the app's own OpenAPI schema (issue 19): every endpoint, a bounded number of generated
requests each (writes with the admin token): no 5xx, and every 4xx is a JSON ``{"error": "<one line>"}``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from multimodal_rec.serving.http import create_app  # noqa: E402
from multimodal_rec.serving.live import LiveCatalog  # noqa: E402

TOKEN = "fuzz-admin-token"


@pytest.fixture
def app(bundle: Path, tmp_path: Path):
    out = tmp_path / "bundle"
    shutil.copytree(bundle, out)
    live = LiveCatalog.open(out)
    yield create_app(live.rec, live=live, admin_token=TOKEN)
    live.close()


def test_no_5xx_and_every_4xx_is_a_json_error(app) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 8

    for op in operations:

        @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(case=op.as_strategy())
        def check(case) -> None:
            response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
            where = (case.method, case.path, response.status_code, response.text[:300])
            assert response.status_code < 500, where
            if 400 <= response.status_code < 500:
                body = response.json()
                assert isinstance(body, dict) and set(body) == {"error"}, where
                assert body["error"] and "\n" not in body["error"], where

        check()
