"""``mmrec serve``: the HTTP service over a bundle."""

from __future__ import annotations

import argparse

from multimodal_rec.cli.common import (
    Subparsers,
    add_command,
    add_synonyms_flag,
    add_text_backend,
    overrides,
    positive_int,
)


def cmd_serve(a: argparse.Namespace) -> None:
    from multimodal_rec.config import build_config
    from multimodal_rec.serving.http import run_server
    from multimodal_rec.serving.text_backends import ServeConfig

    serve = build_config(ServeConfig, overrides(a.set), "serve")
    serve.text_backend = a.text_backend or serve.text_backend
    serve.synonyms = a.synonyms or serve.synonyms
    tokens = {"admin_token_file": a.admin_token_file, "api_token_file": a.api_token_file}
    run_server(a.bundle, host=a.host, port=a.port, workers=a.workers, serve=serve, **tokens)


def add_serve(sub: Subparsers) -> None:
    s = add_command(
        sub, "serve", "HTTP service over a bundle (needs the serve extra: pip install -e '.[serve]')", cmd_serve
    )
    s.add_argument("--bundle", required=True)
    s.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument(
        "--workers", type=positive_int, default=1, help="worker processes, forked after one load: they share its memory"
    )
    s.add_argument(
        "--admin-token-file",
        metavar="FILE",
        help="enables POST /videos, DELETE /videos/ID, POST /admin/snapshot for 'Authorization: Bearer <token in "
        "FILE>' (or set MMREC_ADMIN_TOKEN); without it they answer 403. Needs --workers 1",
    )
    s.add_argument("--api-token-file", metavar="FILE", help="every read endpoint but /healthz needs this bearer token")
    add_synonyms_flag(s)
    add_text_backend(s)
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="query settings (serving.text_backends.ServeConfig): query_cache=N (0: no cache), batch_window_ms=MS, "
        "max_batch=N, onnx_threads=N, known_texts=false, concurrent=false (one query at a time, as before), "
        "synonyms=FILE (= --synonyms)",
    )
