"""HTTP service: a thin FastAPI layer over ``Recommender`` (search, recommend, explain, catalog rows, metrics).

fastapi, uvicorn and prometheus-client are the optional ``serve`` extra; they are imported where used, so importing
this module never needs them. The service keeps no user data: it logs endpoint, status and latency, never a body.
"""

# No ``from __future__ import annotations`` here: FastAPI resolves endpoint annotations against module globals, and
# the request models are built per app (schemas.py; their limits are create_app arguments), so annotations must stay
# eager: an endpoint's ``req: m.search`` is evaluated to the app's own request class when the endpoint is defined.

import errno
import inspect
import json
import logging
import math
import os
import re
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from multimodal_rec.errors import UserError
from multimodal_rec.serving.http_writes import MAX_BODY, Guard, add_write_routes, read_token
from multimodal_rec.serving.metrics import METRICS_ENV, add_metrics_route, observe
from multimodal_rec.serving.moments import check_moments_mode
from multimodal_rec.serving.schemas import MAX_FILTERS, ApiModels, api_models
from multimodal_rec.serving.synonyms import load_synonyms
from multimodal_rec.serving.validation import MAX_HISTORY, MAX_K, MAX_QUERY_CHARS

if TYPE_CHECKING:
    from fastapi import FastAPI

    from multimodal_rec.serving.live import LiveCatalog
    from multimodal_rec.serving.recommender import Recommender

__all__ = ["MAX_FILTERS", "create_app", "run_server"]
LOG = logging.getLogger(__name__)
SERVE_EXTRA = "the HTTP service needs the serve extra: pip install -e '.[serve]'"
ADMIN_TOKEN_ENV = "MMREC_ADMIN_TOKEN"  # the admin token, when no --admin-token-file is given
_MAX_ERRORS = 3  # validation problems named in one error line
_MAX_ERROR_CHARS = 400


def _check_limit(name: str, value: int, top: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
        raise UserError(f"{name} must be an integer in [1, {top}], got {value!r}")


def _require_serve_extra(*modules: str) -> None:
    """Fail with one line naming the extra when an optional serving dependency is missing."""
    import importlib

    for name in ("fastapi", "pydantic", "prometheus_client", *modules):
        try:
            importlib.import_module(name)
        except ImportError:
            raise UserError(SERVE_EXTRA) from None
    import pydantic

    if not pydantic.VERSION.startswith("2."):  # fastapi 0.110 still allowed pydantic 1; the models need 2
        raise UserError(f"{SERVE_EXTRA} (with pydantic 2, found {pydantic.VERSION})")


# --- JSON helpers ---------------------------------------------------------------------------------------------
def _json_value(v: Any) -> Any:
    """Catalog values -> strict JSON: numpy scalars unboxed, NaN / NaT / inf -> null, timestamps -> ISO strings."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, list | tuple | np.ndarray):
        return [_json_value(x) for x in v]
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if pd.api.types.is_scalar(v) and pd.isna(v):
        return None
    if isinstance(v, datetime | date):
        return v.isoformat()
    return v


def _json_response(content: dict[str, Any]) -> Any:
    """``content`` (already strict JSON values, in the shape of the route's response model) as the response itself.

    A route returning a plain dict has FastAPI validate it against the response model (in a second hop through the
    thread pool) and re-encode it: ~0.4 ms a search answer on this project's machine, against 0.05 ms for
    ``json.dumps``. The response models still document the answers in ``/openapi.json``, and the schema tests
    (``tests/serving/test_fuzz.py``) check every answer against them."""
    from starlette.responses import Response

    body = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return Response(body.encode(), media_type="application/json")


def _one_line(text: str) -> str:
    """Collapse whitespace and cap the length: error messages are one short line."""
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."


def _where(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("body", "history", 3)`` -> ``history[3]``; the request part (body, path...) only when nothing else."""
    parts = list(loc)
    head = str(parts.pop(0)) if parts and parts[0] in ("body", "path", "query", "header", "cookie") else "body"
    name = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")
    return name or head


def _problem(err: dict[str, Any]) -> str:
    """One pydantic error -> ``"k: must be >= 1"`` (built from the error type and limits, never the input value)."""
    kind, ctx = err.get("type", ""), err.get("ctx") or {}
    n_min, n_max = ctx.get("min_length"), ctx.get("max_length")
    text = {
        "missing": "is required",
        "extra_forbidden": "is not a known field",
        "int_type": "must be an integer",
        "int_parsing": "must be an integer",
        "int_from_float": "must be an integer",
        "string_type": "must be a string",
        "list_type": "must be a list",
        "dict_type": "must be a JSON object",
        "bool_type": "must be true or false",
        "literal_error": f"must be one of {ctx.get('expected')}",
        "model_type": "must be a JSON object",
        "model_attributes_type": "must be a JSON object",
        "greater_than_equal": f"must be >= {ctx.get('ge')}",
        "less_than_equal": f"must be <= {ctx.get('le')}",
        "string_too_short": "must not be empty" if n_min == 1 else f"must have at least {n_min} characters",
        "string_too_long": f"must have at most {n_max} characters",
        "too_short": "must not be empty" if n_min == 1 else f"must have at least {n_min} items",
        "too_long": f"must have at most {n_max} items",
    }.get(kind)
    if text is None:
        text = str(err.get("msg", "is invalid")).removeprefix("Value error, ")
    return f"{_where(err.get('loc', ()))}: {text}"


def _is_json(content_type: str | None) -> bool:
    """``application/json`` or a ``+json`` type, parameters (charset) aside."""
    media = (content_type or "").split(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _validation_error(errors: list[dict[str, Any]], content_type: str | None = "application/json") -> tuple[int, str]:
    """FastAPI's list of validation errors -> (status, one line): 400 for a body that is not JSON, 415 for a body
    sent without a JSON content-type (FastAPI then does not parse it), else 422."""
    body_unread = any(tuple(e.get("loc", ())) == ("body",) and e.get("type") != "missing" for e in errors)
    if body_unread and not _is_json(content_type):
        got = f"unsupported content-type {content_type[:60]!r}" if content_type else "no content-type header"
        return 415, _one_line(f"{got}: send the body as JSON with content-type: application/json")
    for err in errors:
        if err.get("type") == "json_invalid":
            loc = err.get("loc", ())
            pos = f" at character {loc[1]}" if len(loc) > 1 and isinstance(loc[1], int) else ""
            reason = (err.get("ctx") or {}).get("error", "cannot be decoded")
            return 400, _one_line(f"malformed JSON body: {reason}{pos}")
    line = "; ".join(_problem(e) for e in errors[:_MAX_ERRORS]) or "invalid request"
    if len(errors) > _MAX_ERRORS:
        line += f" (and {len(errors) - _MAX_ERRORS} more)"
    return 422, _one_line(line)


# --- the app ------------------------------------------------------------------------------------------------------
def create_app(
    rec: "Recommender",
    max_query_chars: int = MAX_QUERY_CHARS,
    max_history: int = MAX_HISTORY,
    max_k: int = MAX_K,
    *,
    live: "LiveCatalog | None" = None,
    admin_token: str | None = None,
    api_token: str | None = None,
    max_body: int = MAX_BODY,
) -> "FastAPI":
    """A FastAPI app answering search / recommend / explain over ``rec``; limits bound every request field.

    ``live`` (a LiveCatalog over ``rec``) and ``admin_token`` enable the write endpoints (without both they answer
    403); ``api_token`` protects the reads; ``max_body``: bytes of one request body (413 above).

    The limits default to the Recommender's own (serving.validation), and may only be lowered: the Recommender
    refuses more. Each app has its own Prometheus registry, so several apps can live in one process (tests, several
    bundles).
    """
    _require_serve_extra()
    for name, value, top in (
        ("max_query_chars", max_query_chars, MAX_QUERY_CHARS),
        ("max_history", max_history, MAX_HISTORY),
        ("max_k", max_k, MAX_K),
    ):
        _check_limit(name, value, top)  # the Recommender refuses more

    m = api_models(max_query_chars, max_history, max_k)
    app = _new_app()
    registry = observe(app, rec)
    _add_error_handlers(app)
    _add_query_routes(app, rec, m)
    _add_catalog_routes(app, rec, m)
    add_write_routes(app, live, admin_token, m.errors)
    add_metrics_route(app, registry)
    app.add_middleware(Guard, max_body=max_body, api_token=api_token, admin_token=admin_token)
    return app


def _new_app() -> "FastAPI":
    """The bare FastAPI app (OpenAPI title, version, description), with FastAPI's own telemetry off; /docs and
    /redoc load their assets from this service (fastapi-offline, no CDN: they work offline), else are left out."""
    from fastapi import FastAPI

    import multimodal_rec

    kwargs: dict[str, Any] = {}
    if "telemetry" in inspect.signature(FastAPI).parameters:  # FastAPI's own OpenTelemetry logs exception messages
        kwargs["telemetry"] = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}
    kwargs.update(title="multimodal_rec", version=multimodal_rec.__version__)
    kwargs["description"] = "Text-to-video search and history-based recommendation over one encoded catalog."
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:
        LOG.warning("fastapi-offline is not installed: no /docs or /redoc (FastAPI's load their assets from a CDN)")
        return FastAPI(docs_url=None, redoc_url=None, **kwargs)
    return FastAPIOffline(**kwargs)


def _add_error_handlers(app: "FastAPI") -> None:
    """Every error answer is ``{"error": "<one line>"}``: validation 400 / 422, UserError 400, HTTP errors as is."""
    from fastapi import Request, Response
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, line = _validation_error(list(exc.errors()), request.headers.get("content-type"))
        return JSONResponse({"error": line}, status_code=status)

    async def on_user_error(request: Request, exc: UserError) -> JSONResponse:
        return JSONResponse({"error": _one_line(str(exc))}, status_code=400)

    async def on_http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code in (204, 304):
            return Response(status_code=exc.status_code, headers=exc.headers)
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail, default=str)
        return JSONResponse({"error": _one_line(detail)}, status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(RequestValidationError, on_validation)  # type: ignore[arg-type]
    app.add_exception_handler(UserError, on_user_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, on_http_error)  # type: ignore[arg-type]


# Endpoints are plain ``def``s so the CPU-bound model calls run in the threadpool. Their annotations are evaluated
# when they are defined (no postponed annotations in this module), so ``m.search`` below is the request class.
def _add_query_routes(app: "FastAPI", rec: "Recommender", m: ApiModels) -> None:
    """POST /search, /recommend, /explain."""
    from multimodal_rec.serving.queries import query_warnings

    @app.post("/search", response_model=m.searched, responses=m.errors)
    def search(req: m.search) -> Any:
        """Videos that match a text query, best first; ``warnings`` says when the scores are noise."""
        hits = _search_hits(rec, req)
        warnings = query_warnings(rec.query_info(req.query))
        return _json_response({"hits": [_json_value(h.to_dict()) for h in hits], "warnings": warnings})

    @app.post("/recommend", response_model=m.recommended, responses=m.errors)
    def recommend(req: m.recommend) -> Any:
        """Videos a user will want next, from the texts and video ids they engaged with (oldest first)."""
        why = rec.resolve_history(req.history, history_ids=req.history_ids)
        hits = rec.recommend(
            req.history,
            req.k,
            exclude=req.exclude,
            filters=req.filters,
            exclude_seen=req.exclude_seen,
            history_ids=req.history_ids,
        )
        return _json_response({"hits": [_json_value(h.to_dict()) for h in hits], **why.to_dict()})

    @app.post("/explain", response_model=m.explained, responses=m.errors)
    def explain(req: m.explain) -> Any:
        """The attention weight of each history item as the model read it: which items drove the recommendation."""
        why = rec.resolve_history(req.history, history_ids=req.history_ids)
        weights = rec.explain(req.history, history_ids=req.history_ids)
        return _json_response({"attention": [{"text": t, "weight": float(w)} for t, w in weights], **why.to_dict()})


def _search_hits(rec: "Recommender", req: Any) -> list[Any]:
    """/search's hits: videos (each with its best moment), or with ``moments`` the best segments."""
    if req.moments:
        check_moments_mode(req.mode)
        return rec.search_moments(req.query, req.k, filters=req.filters, min_score=req.min_score)
    return rec.search(req.query, req.k, filters=req.filters, min_score=req.min_score, mode=req.mode)


def _add_catalog_routes(app: "FastAPI", rec: "Recommender", m: ApiModels) -> None:
    """GET /videos/{video_id} (one catalog row) and /healthz."""
    from starlette.exceptions import HTTPException

    @app.get("/videos/{video_id}", responses={404: {"model": m.error}})
    def video(video_id: str) -> dict[str, Any]:
        """One catalog row: the video id and its metadata columns."""
        row = rec.row_of.get(video_id)
        if row is None:
            raise HTTPException(404, f"unknown video id {video_id[:100]!r}")
        return _json_value(rec.catalog.iloc[row].to_dict())

    @app.get("/healthz", response_model=m.health, response_model_exclude_none=True)
    def healthz() -> dict[str, Any]:
        """Liveness: the bundle is loaded, how many videos it serves, and the synonyms file in use (when one is)."""
        return {"status": "ok", "videos": len(rec), "synonyms": rec.synonyms.info}


# --- running it -----------------------------------------------------------------------------------------------------
def run_server(
    bundle: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    synonyms: str | None = None,
    serve: Any = None,
    admin_token_file: str | None = None,
    api_token_file: str | None = None,
) -> None:
    """Load ``bundle`` and serve it with uvicorn until interrupted (loopback only unless ``host`` says otherwise).

    With ``workers > 1`` the bundle is loaded once and the worker processes are forked from it, sharing its memory
    (:mod:`.prefork`); each gets an equal share of the cores.
    ``synonyms``: a synonyms file applied to every query (``Recommender.synonyms.set``; shown by ``/healthz``; or
    ``serve.synonyms``). ``serve``: the query settings (a ``ServeConfig``: text backend, cache, micro-batching; see
    ``Recommender.load``). ``admin_token_file`` (else ``$MMREC_ADMIN_TOKEN``): enables the write endpoints, one
    worker only (:mod:`.http_writes`); ``api_token_file``: the reads need it too. The write-ahead log is replayed.
    """
    _require_serve_extra("uvicorn")
    import dataclasses

    import uvicorn

    from multimodal_rec.serving.text_backends import serve_config

    serve = serve_config(serve)
    synonyms = synonyms or serve.synonyms

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UserError(f"workers must be a positive integer, got {workers!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise UserError(f"port must be an integer in [0, 65535], got {port!r}")
    check_port_free(host, port)  # before loading the bundle (seconds): a port in use is known at once
    syn = load_synonyms(synonyms) if synonyms else None  # a bad file, too
    admin = read_token(admin_token_file, "admin token") or os.environ.get(ADMIN_TOKEN_ENV) or None
    api = read_token(api_token_file, "API token")
    if workers > 1 and not hasattr(os, "fork"):
        raise UserError("--workers > 1 forks the workers from one load, and this platform has no fork: use --workers 1")
    if admin and workers > 1:
        raise UserError("writes (an admin token) need --workers 1: worker processes would each hold their own catalog")
    # access_log=False: uvicorn's access log prints raw paths (/videos/<id> a user looked up); _Observe logs routes.
    # timeout_keep_alive 30 s: longer than clients' usual idle expiry (httpx, requests: 5 s), so a client never sends a
    # request on a connection the server is closing (a transport error no retry policy should have to absorb)
    options: dict[str, Any] = {"host": host, "port": port, "access_log": False, "timeout_keep_alive": 30}
    from multimodal_rec.serving.live import LiveCatalog, load_replayed

    if workers == 1:
        live = LiveCatalog.open(bundle, serve=serve) if admin else None
        rec = live.rec if live is not None else load_replayed(bundle, serve=serve)
        rec.synonyms.set(syn)
        LOG.info("serving %d videos from %s on http://%s:%d", len(rec), bundle, host, port)
        try:
            uvicorn.run(create_app(rec, live=live, admin_token=admin, api_token=api), **options)
        finally:
            if live is not None:
                live.close()
        return
    import shutil
    import tempfile

    from multimodal_rec.serving import prefork
    from multimodal_rec.serving.metrics import use_multiprocess_dir

    def load() -> "Recommender":  # once, in this process: the forked workers share it (serving.prefork)
        rec = load_replayed(bundle, serve=dataclasses.replace(serve, onnx_threads=1))
        rec.synonyms.set(syn)
        LOG.info("serving %d videos from %s with %d workers on http://%s:%d", len(rec), bundle, workers, host, port)
        return rec

    def app(rec: "Recommender") -> "FastAPI":  # built in each worker, after the fork
        return create_app(rec, api_token=api)

    own = None if os.environ.get(METRICS_ENV) else tempfile.mkdtemp(prefix="mmrec-metrics-")  # else: the user's
    os.environ[METRICS_ENV] = os.environ.get(METRICS_ENV) or str(own)  # every worker writes its values there
    use_multiprocess_dir()
    threads = max(1, (os.cpu_count() or 1) // workers)
    try:
        prefork.serve_preloaded(load, app, workers, (threads, serve.onnx_threads or threads), options)
    finally:
        if own is not None:  # ours: gone with this server, and not inherited by whatever this process runs next
            os.environ.pop(METRICS_ENV, None)
            shutil.rmtree(own, ignore_errors=True)
        use_multiprocess_dir()  # metrics this process makes later: as the environment says again


def check_port_free(host: str, port: int) -> None:
    """Bind ``host:port`` briefly (as uvicorn will, with SO_REUSEADDR): a one-line UserError if that cannot work."""
    import socket

    if port == 0:  # any free port: nothing to check
        return
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise UserError(f"cannot serve on {host}:{port}: unknown host ({e})") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            in_use = e.errno == errno.EADDRINUSE
            why = "the port is already in use (stop that server or pick another --port)" if in_use else e.strerror
            raise UserError(f"cannot serve on {host}:{port}: {why}") from None
