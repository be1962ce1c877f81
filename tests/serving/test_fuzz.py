"""schemathesis against the app's own OpenAPI schema (issue 19): every endpoint, a bounded number of generated
requests each (writes with the admin token): no 5xx, every answer as the schema declares it (status code, content
type, body, headers), and every 4xx a JSON ``{"error": "<one line>"}``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.specs.openapi import checks  # noqa: E402

from multimodal_rec.serving.http import create_app  # noqa: E402
from multimodal_rec.serving.live import LiveCatalog  # noqa: E402

TOKEN = "fuzz-admin-token"
# the response is what the schema says: a documented status code, its content type and body schema, its headers.
# (Not positive_data_acceptance: a schema-valid filter on a column this catalog lacks is rightly a 400.)
CONFORMANCE = [
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


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
            case.validate_response(response, checks=CONFORMANCE)  # as the schema declares the answer
            if 400 <= response.status_code < 500:
                body = response.json()
                assert isinstance(body, dict) and set(body) == {"error"}, where
                assert body["error"] and "\n" not in body["error"], where

        check()
