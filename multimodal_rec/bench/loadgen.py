"""``bench serve``'s load generator: keep-alive HTTP/1.1 connections sending pre-encoded requests, as wrk does.

The load generator runs on the same cores as the server it measures, so whatever CPU it spends per request is taken
from the server. httpx spent ~3 ms per request here, half of what the server spends answering one (and what the
in-process comparison never pays); this client encodes every request once before the clock starts and per request
only writes bytes, reads the status line, headers and a ``Content-Length`` body, and parses the JSON to check it has
hits. Each of ``concurrency`` connections sends its next request when the last answer is in (closed loop).

It speaks only what ``mmrec serve`` answers (uvicorn: ``Content-Length`` bodies, keep-alive); an answer without a
``Content-Length`` is counted as an error, and a connection the server closed is opened again.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit

Request = tuple[str, dict[str, Any]]
_ERRORS = (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)


def encode_request(host: str, path: str, body: dict[str, Any]) -> bytes:
    """The bytes of a keep-alive ``POST path`` with a JSON ``body``."""
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode("latin-1") + data


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """One HTTP/1.1 answer: ``(status, body, keep_alive)``; ValueError when it has no ``Content-Length``."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if "content-length" not in headers:
        raise ValueError("an answer without Content-Length")
    body = await reader.readexactly(int(headers["content-length"]))
    return int(parts[1]), body, headers.get("connection", "").lower() != "close"


async def fire(url: str, bodies: list[Request], concurrency: int, timeout: float) -> dict[str, Any]:
    """Send every (path, body) over ``concurrency`` connections, each sending its next when its last answer came;
    ``{"lat": {path: [seconds]}, "errors": [why], "seconds": wall}``. An error: a status other than 200, an answer
    without hits, no answer within ``timeout`` seconds or a broken connection."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    todo = [(path, encode_request(f"{host}:{port}", path, body)) for path, body in bodies]
    lat: dict[str, list[float]] = {}
    errors: list[str] = []
    nxt = 0

    async def connection() -> None:
        nonlocal nxt
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while nxt < len(todo):
                path, raw = todo[nxt]
                nxt += 1
                t = time.perf_counter()
                why = ""
                try:
                    async with asyncio.timeout(timeout):
                        if conn is None:
                            conn = await asyncio.open_connection(host, port)
                        conn[1].write(raw)
                        status, body, keep = await read_response(conn[0])
                    if status != 200:
                        why = f"{path}: HTTP {status}"
                    elif not json.loads(body).get("hits"):
                        why = f"{path}: no hits"
                except _ERRORS as e:
                    why, keep = f"{path}: {type(e).__name__}", False
                lat.setdefault(path, []).append(time.perf_counter() - t)
                if why:
                    errors.append(why)
                if not keep and conn is not None:
                    conn[1].close()
                    conn = None
        finally:
            if conn is not None:
                conn[1].close()

    t0 = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return {"lat": lat, "errors": errors, "seconds": time.perf_counter() - t0}
