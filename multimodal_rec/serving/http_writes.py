"""The HTTP service's write side and its guards: POST /videos, DELETE /videos/{id}, POST /admin/snapshot, bearer
tokens, and the request-body size cap.

Writes go through a :class:`~multimodal_rec.serving.live.LiveCatalog` (logged and fsynced before the 2xx). They
need ``Authorization: Bearer <admin token>``; a service started without an admin token answers them 403 and changes
nothing. With an API token every other endpoint but ``/healthz`` needs ``Authorization: Bearer <api token>`` (the
admin token works too). Tokens are compared in constant time (``hmac.compare_digest``) and never logged.
"""

# No ``from __future__ import annotations``: FastAPI and pydantic read these annotations eagerly (see http.py).

import hmac
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from multimodal_rec.errors import UserError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from multimodal_rec.serving.live import LiveCatalog

LOG = logging.getLogger(__name__)
MAX_BODY = 16 << 20  # bytes of one request body (413 above): 1000 videos of 1024 floats fit
MAX_ADD = 1000  # videos in one POST /videos
MAX_DIM = 4096  # numbers in one embedding
_OPEN = ("/healthz",)  # answered without the API token (liveness probes)


def read_token(path: str | Path | None, what: str) -> str | None:
    """The token in file ``path`` (surrounding whitespace stripped); None without a file. UserError (one line, no
    token in it) for a missing, unreadable or empty file."""
    if path is None:
        return None
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the {what} file {path}: {getattr(e, 'strerror', None) or e}") from None
    if not token:
        raise UserError(f"the {what} file {path} is empty")
    return token


def _bearer(header: str | None, *tokens: str | None) -> bool:
    """Whether ``header`` is ``Bearer <one of tokens>`` (constant-time comparison of each)."""
    scheme, _, given = (header or "").partition(" ")
    ok = False
    for t in tokens:
        if t is not None and scheme.lower() == "bearer":
            ok |= hmac.compare_digest(given.strip().encode(), t.encode())
    return ok


class Guard:
    """Pure ASGI middleware: the body-size cap (413, also for bodies sent without a content-length) and the API
    token on reads (401). Answers are ``{"error": ...}`` like every other error."""

    def __init__(self, app: Any, max_body: int, api_token: str | None, admin_token: str | None) -> None:
        self.app, self.max_body, self.api_token, self.admin_token = app, max_body, api_token, admin_token

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        writes = (scope["path"] == "/videos" and scope["method"] != "GET") or scope["path"].startswith("/admin/")
        writes = writes or (scope["path"].startswith("/videos/") and scope["method"] == "DELETE")
        reader = self.api_token and not writes and scope["path"] not in _OPEN
        if reader and not _bearer(headers.get("authorization"), self.api_token, self.admin_token):
            return await _answer(scope, receive, send, 401, "this service needs Authorization: Bearer <api token>")
        too_big = f"request body over {self.max_body} bytes"
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            return await _answer(scope, receive, send, 413, too_big)
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                return None  # the client went away
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return await _answer(scope, receive, send, 413, too_big)
            more = msg.get("more_body", False)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        return await self.app(scope, replay, send)


async def _answer(scope: dict, receive: Any, send: Any, status: int, error: str) -> None:
    from starlette.responses import JSONResponse

    extra = {"www-authenticate": "Bearer"} if status == 401 else None
    await JSONResponse({"error": error}, status_code=status, headers=extra)(scope, receive, send)


def add_write_routes(app: "FastAPI", live: "LiveCatalog | None", admin_token: str | None, errors: dict) -> None:
    """POST /videos, DELETE /videos/{video_id}, POST /admin/snapshot (403 without an admin token or a live catalog)."""
    from fastapi import Header
    from starlette.exceptions import HTTPException

    m = _write_models()
    auth_errors = {c: errors[400] for c in (401, 403, 404, 413, 503)}

    def authorize(authorization: str | None) -> "LiveCatalog":
        if admin_token is None or live is None:
            raise HTTPException(403, "writes are disabled: start the service with --admin-token-file (or the env var)")
        if not _bearer(authorization, admin_token):
            bearer = {"WWW-Authenticate": "Bearer"}
            raise HTTPException(401, "writes need Authorization: Bearer <admin token>", headers=bearer)
        return live

    Auth = Annotated[str | None, Header(description="Bearer <admin token>")]

    @app.post("/videos", response_model=m.added, responses={**errors, **auth_errors})
    def add_videos(req: m.add, authorization: Auth = None) -> dict[str, Any]:
        """Add videos (each with its embedding), durably: logged and fsynced before this answers. Ids already
        served are listed in ``skipped`` with the reason."""
        target = authorize(authorization)
        videos = [v.model_dump() for v in req.videos]
        try:
            res = target.add(videos)
        except OSError as e:
            raise _unavailable(e, "the write could not be made durable", "nothing was added") from None
        skipped = [{"video_id": s["video_id"], "reason": s["reason"]} for s in res.skipped]
        return {"added": res.added, "skipped": skipped}

    @app.delete("/videos/{video_id}", response_model=m.removed, responses={**errors, **auth_errors})
    def remove_video(video_id: str, authorization: Auth = None) -> dict[str, Any]:
        """Stop serving a video, durably (404 when it is not served)."""
        target = authorize(authorization)
        if video_id not in target.rec.row_of:
            raise HTTPException(404, f"unknown video id {video_id[:100]!r}")
        try:
            target.remove([video_id])
        except OSError as e:
            raise _unavailable(e, "the write could not be made durable", "nothing was removed") from None
        except UserError:  # removed meanwhile by another request
            raise HTTPException(404, f"unknown video id {video_id[:100]!r}") from None
        return {"removed": video_id}

    @app.post("/admin/snapshot", response_model=m.snapshot, responses={**errors, **auth_errors})
    def snapshot(authorization: Auth = None) -> dict[str, Any]:
        """Write the served catalog as a new version of the bundle (atomically), then empty the write-ahead log."""
        target = authorize(authorization)
        try:
            target.snapshot()
        except OSError as e:
            raise _unavailable(e, "snapshot failed", "the previous bundle and log are intact") from None
        return {"videos": len(target.rec), "wal_seq": target.wal.seq}


def _unavailable(e: OSError, what: str, outcome: str) -> Exception:
    """A 503 for a failing disk: what failed, the OS's reason, what that left (one line, no path)."""
    from starlette.exceptions import HTTPException

    LOG.error("%s: %s", what, e)
    return HTTPException(503, f"{what} ({e.strerror or type(e).__name__}): {outcome}")


def _write_models() -> Any:
    """The request and response models of the write endpoints."""
    from types import SimpleNamespace

    from pydantic import BaseModel, ConfigDict, Field

    class Strict(BaseModel):
        model_config = ConfigDict(strict=True, extra="forbid")

    Number = Annotated[float, Field(allow_inf_nan=False)]
    Meta = dict[str, str | bool | int | Number | None]  # scalars: a catalog cell each

    class VideoIn(Strict):
        video_id: str = Field(min_length=1, max_length=200, description="no path separators or control characters")
        embedding: list[Number] | None = Field(
            None, min_length=1, max_length=MAX_DIM, description="the video's vector: the bundle's dimension"
        )
        path: str | None = Field(
            None, max_length=4096, description="instead of embedding: a file the server reads and encodes"
        )
        metadata: Meta = Field(default_factory=dict, max_length=200, description="catalog columns -> values")

    class AddRequest(Strict):
        videos: list[VideoIn] = Field(min_length=1, max_length=MAX_ADD)

    class Skipped(BaseModel):
        video_id: str
        reason: str

    class AddResponse(BaseModel):
        added: list[str]
        skipped: list[Skipped]

    class RemoveResponse(BaseModel):
        removed: str

    class SnapshotResponse(BaseModel):
        videos: int
        wal_seq: int = Field(description="the last write-ahead log record the new bundle version holds")

    return SimpleNamespace(add=AddRequest, added=AddResponse, removed=RemoveResponse, snapshot=SnapshotResponse)
