"""``mmrec serve --workers 2`` (issue 18): workers forked from one load; /metrics reports the requests of every
worker, whichever answers; a worker that dies is replaced."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from live_server import free_port

from multimodal_rec.bench.memory import descendants


@pytest.mark.parametrize("serve", [None, {"text_backend": "onnx-int8", "onnx_threads": 2}], ids=["torch", "onnx"])
def test_two_workers_metrics_are_combined(bundle: Path, tmp_path: Path, serve: dict[str, Any] | None) -> None:
    """Also with ONNX Runtime on two threads per worker (each worker reopens its session after the fork)."""
    pytest.importorskip("uvicorn")
    pytest.importorskip("prometheus_client")
    httpx = pytest.importorskip("httpx")
    if serve is not None:
        pytest.importorskip("onnxruntime")
        bundle = Path(shutil.copytree(bundle, tmp_path / "bundle"))  # the ONNX graph is cached in the bundle
    port = free_port()
    code = (
        "from multimodal_rec.serving.http import run_server; from multimodal_rec.serving.text_backends import "
        f"ServeConfig; run_server({str(bundle)!r}, port={port}, workers=2, serve=ServeConfig(**{serve or {}!r}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url, n = f"http://127.0.0.1:{port}", 24
    try:
        deadline = time.monotonic() + 240
        while True:  # the workers are forked once the bundle is loaded: /healthz answers from either
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.5)
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
        # the workers are forks of the one loaded process; one that dies is forked again, with the bundle at once
        workers = descendants(proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while len(set(descendants(proc.pid)) - {workers[0]}) < 2:
            assert time.monotonic() < deadline, "the dead worker was not replaced"
            time.sleep(0.2)
        for i in range(8):
            r = httpx.post(f"{url}/search", json={"query": f"a blue square {i}", "k": 2}, timeout=60)
            assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)  # uvicorn stops its workers gracefully
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_metrics_directory_lives_only_as_long_as_the_server(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_server makes the multiprocess directory for its workers and leaves no trace in this process after."""
    pytest.importorskip("uvicorn")
    from prometheus_client import values

    from multimodal_rec.serving import http, prefork

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    seen: list[tuple[str, Any]] = []
    monkeypatch.setattr(
        prefork, "serve_forked", lambda *a: seen.append((os.environ["PROMETHEUS_MULTIPROC_DIR"], values.ValueClass))
    )
    monkeypatch.setattr(http, "check_port_free", lambda host, port: None)
    http.run_server(str(bundle), port=9000, workers=2)
    ((directory, value_class),) = seen
    assert directory and value_class is not values.MutexValue  # the workers' metrics write to the directory
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ and not Path(directory).exists()
    assert values.ValueClass is values.MutexValue  # and this process's later metrics do not
