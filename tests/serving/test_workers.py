"""``mmrec serve --workers 2`` (issue 18): /metrics reports the requests of every worker, whichever answers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from live_server import free_port


def test_two_workers_metrics_are_combined(bundle: Path) -> None:
    pytest.importorskip("uvicorn")
    pytest.importorskip("prometheus_client")
    httpx = pytest.importorskip("httpx")
    port = free_port()
    code = f"from multimodal_rec.serving.http import run_server; run_server({str(bundle)!r}, port={port}, workers=2)"
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url, n = f"http://127.0.0.1:{port}", 24
    try:
        deadline = time.monotonic() + 240
        while True:  # both workers loaded: /healthz answers only from a worker that has its bundle
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.5)
        time.sleep(3)  # the second worker finishes loading
        for i in range(n):  # a new connection each: the kernel spreads them over the workers
            r = httpx.post(f"{url}/search", json={"query": f"a red circle {i}", "k": 2}, timeout=60)
            assert r.status_code == 200
        counts = set()
        for _ in range(6):
            text = httpx.get(f"{url}/metrics", timeout=30).text
            m = re.search(r'mmrec_http_requests_total\{endpoint="/search",status="200"\} ([0-9.]+)', text)
            assert m, text[:2000]
            counts.add(float(m.group(1)))
        assert counts == {float(n)}, counts
    finally:
        proc.send_signal(signal.SIGINT)  # uvicorn stops its workers gracefully
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_metrics_directory_lives_only_as_long_as_the_server(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_server makes the multiprocess directory for its workers and leaves no trace in this process after."""
    uvicorn = pytest.importorskip("uvicorn")
    from multimodal_rec.serving import http

    for name in ("MMREC_SERVE_BUNDLE", "MMREC_SERVE_TORCH_THREADS", "MMREC_SERVE_CONFIG"):
        monkeypatch.setenv(name, "")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    seen: list[str] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.append(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
    monkeypatch.setattr(http, "check_port_free", lambda host, port: None)
    http.run_server(str(bundle), port=9000, workers=2)
    assert len(seen) == 1 and seen[0]
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ and not Path(seen[0]).exists()
