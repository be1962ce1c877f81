"""bench serve's load generator: counts what a server answers exactly, and survives what a server may do."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from multimodal_rec.bench.loadgen import fire


def _answer(status: int, body: bytes, *, length: bool = True, close: bool = False) -> bytes:
    head = f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
    head += f"content-length: {len(body)}\r\n" if length else ""
    head += "connection: close\r\n" if close else ""
    return head.encode() + b"\r\n" + body


async def _run(bodies: list[tuple[str, dict[str, Any]]], concurrency: int, timeout: float = 5.0) -> dict[str, Any]:
    """A scripted server: what it answers depends on the request's ``do`` field; it records every request body."""
    seen: list[dict[str, Any]] = []
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                n = int(
                    next(h for h in head.decode().split("\r\n") if h.lower().startswith("content-length")).split(":")[1]
                )
                req = json.loads(await reader.readexactly(n))
                seen.append(req)
                do = req["do"]
                if do == "sleep":
                    await asyncio.sleep(1.0)
                    continue
                writer.write(
                    {
                        "ok": _answer(200, b'{"hits": [1]}'),
                        "empty": _answer(200, b'{"hits": []}'),
                        "fail": _answer(500, b'{"detail": "x"}'),
                        "close": _answer(200, b'{"hits": [1]}', close=True),
                        "nolength": _answer(200, b'{"hits": [1]}', length=False),
                    }[do]
                )
                await writer.drain()
                if do in ("close", "nolength"):
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        res = await fire(f"http://127.0.0.1:{port}", bodies, concurrency, timeout)
    return {**res, "seen": seen, "connections": connections}


def test_every_request_is_sent_once_and_each_failure_is_counted() -> None:
    kinds = ["ok"] * 6 + ["empty", "fail", "close", "ok", "nolength", "ok"]
    bodies = [("/search" if i % 2 else "/recommend", {"do": d, "i": i}) for i, d in enumerate(kinds)]
    res = asyncio.run(_run(bodies, concurrency=3))
    assert sorted(b["i"] for b in res["seen"]) == list(range(len(kinds)))  # each once, none lost after a close
    assert sum(len(v) for v in res["lat"].values()) == len(kinds)
    assert sorted(res["errors"]) == ["/recommend: ValueError", "/recommend: no hits", "/search: HTTP 500"]
    assert res["connections"] >= 3 + 1  # a close made it reconnect (the last requests may need none)


def test_a_server_that_does_not_answer_times_out_as_an_error() -> None:
    res = asyncio.run(_run([("/search", {"do": "sleep"}), ("/search", {"do": "ok"})], concurrency=1, timeout=0.2))
    assert res["errors"] == ["/search: TimeoutError"] and len(res["lat"]["/search"]) == 2
