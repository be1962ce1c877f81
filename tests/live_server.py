"""A real ``mmrec serve`` process for the tests that need one (crash, load): started on a free loopback port with
an admin token, its output in a file beside the bundle (a pipe could fill and block it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: Path, token_file: Path, timeout_s: float = 120) -> tuple[subprocess.Popen, str]:
    """``run_server(bundle, admin_token_file=token_file)`` in a subprocess; returns it and its base URL once
    ``/healthz`` answers (AssertionError with the server's last output if it dies or does not start in time)."""
    port = free_port()
    code = (
        "from multimodal_rec.serving.http import run_server; "
        f"run_server({str(bundle)!r}, port={port}, admin_token_file={str(token_file)!r})"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = (bundle.parent / "server.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise AssertionError((bundle.parent / "server.log").read_text()[-2000:])
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.1)
