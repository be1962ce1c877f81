"""Serving benchmarks (not tests): the cost of our layer over the raw model + FAISS, and an HTTP load test.

``bench_search`` times ``Recommender.search`` / ``recommend`` end to end against the same work done directly
(tower forward + ``index.search``), alternating the two ways over one query set, so machine noise hits both
alike. ``bench_serve`` starts ``mmrec serve`` on a free loopback port, fires a fixed number of requests at a
fixed concurrency, reads the server's memory, stops it, and runs the same requests in-process (bench.inprocess)
for the throughput the service is held against.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from multimodal_rec.bench.inprocess import bench_inprocess, format_inprocess
from multimodal_rec.bench.loadgen import fire
from multimodal_rec.bench.memory import format_memory, server_memory
from multimodal_rec.bench.timing import latency_ms
from multimodal_rec.bundle import CATALOG_FILE
from multimodal_rec.errors import UserError

LOG = logging.getLogger(__name__)

FALLBACK_QUERIES = (
    "a red ball bouncing",
    "a dog surfing at sunset",
    "green dots rising",
    "a blue square moving left",
    "cooking pasta",
    "a white circle growing",
)
OVERHEAD_GOAL = 1.10
HTTP_GOAL = 0.8  # HTTP throughput / the best in-process throughput of the same requests (issue 18)
WARMUP = 20
HISTORY_LEN = 5


def sample_texts(catalog: Any, n: int, seed: int = 0) -> list[str]:
    """``n`` query texts: the catalog's titles (shuffled, repeated when short), else a fixed list."""
    titles: list[str] = []
    if "title" in catalog.columns:
        titles = [t for t in catalog["title"].astype(str) if t.strip() and t != "None"]
    pool = titles or list(FALLBACK_QUERIES)
    rng = np.random.default_rng(seed)
    return [pool[i] for i in rng.permutation(max(n, len(pool)))[:n] % len(pool)]


def _compare(
    ours: Callable[[int], Any], raw: Callable[[int], tuple[float, float]], n: int
) -> tuple[list[float], list[float], list[float]]:
    """Time ``ours(i)`` and ``raw(i)`` (which returns its own (encode, search) split) for i < n, alternating
    which goes first, after ``WARMUP`` untimed rounds. Returns (ours, raw encode, raw search) seconds."""
    for i in range(min(WARMUP, n)):
        ours(i)
        raw(i)
    t_ours, t_enc, t_search = [], [], []
    for i in range(n):
        for first in (True, False) if i % 2 == 0 else (False, True):
            if first:
                t = time.perf_counter()
                ours(i)
                t_ours.append(time.perf_counter() - t)
            else:
                enc, srch = raw(i)
                t_enc.append(enc)
                t_search.append(srch)
    return t_ours, t_enc, t_search


def bench_search(
    bundle: str | Path, queries: int = 500, k: int = 10, seed: int = 0, device: str = "cpu", mode: str | None = None
) -> dict[str, Any]:
    """p50/p99 latency of ``search`` and ``recommend`` end to end and of their two parts (text or history
    encoding, FAISS search) done directly; ``overhead_ratio`` = median ours / median (encoding + FAISS).

    The same query (or history) goes through both ways in each round, in alternating order. ``device`` is
    where the towers run (``auto``: a GPU when present); the index stays on the CPU either way. The queries are
    catalog titles, so the service's shortcuts (stored item-text features, the query cache) are off here: both
    ways run the text trunk, and the ratio is our layer's cost. ``mmrec bench backends`` measures the shortcuts.
    ``mode``: the search mode (None: the bundle's default; lexical and hybrid add a BM25 pass the direct way lacks).
    """
    import torch

    from multimodal_rec.model.multimodal import to_numpy
    from multimodal_rec.model.prior import with_prior_column
    from multimodal_rec.runtime import pick_device
    from multimodal_rec.serving.recommender import Recommender

    if queries < 1:
        raise UserError(f"queries must be >= 1, got {queries}")
    from multimodal_rec.serving.text_backends import ServeConfig

    same_work = ServeConfig(known_texts=False, query_cache=0)  # else a title skips the trunk that raw_* runs
    rec = Recommender.load(bundle, device=str(pick_device(device)), serve=same_work)
    model, index = rec.model, rec.index
    texts = sample_texts(rec.catalog, queries + HISTORY_LEN, seed)
    histories = [texts[i : i + HISTORY_LEN] for i in range(queries)]
    texts = texts[:queries]

    def raw_text(i: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        with torch.inference_mode():
            xq = with_prior_column(to_numpy(model.encode_text([texts[i]])), index.d, 0.0)
        t1 = time.perf_counter()
        index.search(xq, k)
        return t1 - t0, time.perf_counter() - t1

    def raw_user(i: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        with torch.inference_mode():
            u, _ = model.encode_user([histories[i]])
            xq = with_prior_column(to_numpy(u), index.d, rec.prior_query)
        t1 = time.perf_counter()
        index.search(xq, k)
        return t1 - t0, time.perf_counter() - t1

    out: dict[str, Any] = {
        "bundle": str(bundle),
        "videos": len(rec),
        "index": rec.manifest.get("index"),
        "queries": queries,
        "k": k,
        "torch_threads": torch.get_num_threads(),
        "device": str(model.device),
        "search_mode": mode or rec.search_mode,
    }
    ratios = {}
    for name, ours, raw in (
        ("search", lambda i: rec.search(texts[i], k, mode=mode), raw_text),
        ("recommend", lambda i: rec.recommend(histories[i], k), raw_user),
    ):
        t_ours, t_enc, t_search = _compare(ours, raw, queries)
        base = np.median(np.add(t_enc, t_search))
        ratios[name] = float(np.median(t_ours) / base)
        out[name] = {
            "end_to_end": latency_ms(t_ours),
            "encode": latency_ms(t_enc),
            "index_search": latency_ms(t_search),
            "raw_total": latency_ms(np.add(t_enc, t_search)),
            "overhead_ratio": round(ratios[name], 4),
        }
        LOG.info("bench search %s: %s", name, out[name])
    out["overhead_ratio"] = round(ratios["search"], 4)
    out["overhead_goal"] = OVERHEAD_GOAL
    out["pass"] = all(r <= OVERHEAD_GOAL for r in ratios.values())
    return out


def format_search(r: dict[str, Any]) -> str:
    """Human-readable table of :func:`bench_search`."""
    lines = [
        f"bundle {r['bundle']}: {r['videos']} videos, index {r['index']}, {r['queries']} queries, k={r['k']}, "
        f"torch threads {r['torch_threads']}, device {r.get('device', 'cpu')}",
        f"  {'call':<10}{'part':<22}{'p50 ms':>9}{'p99 ms':>9}",
    ]
    for name, part in (("search", "text encoding"), ("recommend", "history encoding")):
        m = r[name]
        for label, key in (("ours, end to end", "end_to_end"), (part, "encode"), ("FAISS search", "index_search")):
            lines.append(f"  {name:<10}{label:<22}{m[key]['p50_ms']:>9.3f}{m[key]['p99_ms']:>9.3f}")
        lines.append(f"  {name:<10}overhead ratio {m['overhead_ratio']:.3f} (median ours / median encoding + FAISS)")
    verdict = "PASS" if r["pass"] else "FAIL"
    lines.append(f"{verdict}: overhead ratios <= {r['overhead_goal']}")
    return "\n".join(lines)


# --- HTTP load test ----------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll ``/healthz`` until it answers 200; UserError when the server exits first or ``timeout`` passes."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(f"the server exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2.0) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise UserError(f"the server was not ready after {timeout:.0f} s")


def _wait_workers(log_fd: int, workers: int, timeout: float) -> None:
    """Wait until each of ``workers`` uvicorn workers logged its start-up (a worker still loading accepts no
    connection, so a load test started earlier would pin its keep-alive connections on the first worker)."""
    deadline = time.monotonic() + timeout
    while True:
        text = os.pread(log_fd, 1 << 20, 0).decode(errors="replace")  # pread: the server shares the file offset
        started = text.count("Application startup complete")
        if started >= workers:
            return
        if time.monotonic() > deadline:
            LOG.warning("%d of %d workers said they started after %.0f s; measuring anyway", started, workers, timeout)
            return
        time.sleep(0.2)


def server_command(
    bundle: str | Path, port: int, settings: dict[str, Any] | None = None, workers: int = 1
) -> list[str]:
    """The ``mmrec serve`` command line: ``settings`` (ServeConfig fields) as ``--set KEY=VALUE``."""
    cmd = [sys.executable, "-m", "multimodal_rec.cli", "serve", "--bundle", str(bundle), "--port", str(port), "-q"]
    cmd += ["--workers", str(workers)]
    for key, value in (settings or {}).items():
        cmd += ["--set", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
    return cmd


@contextlib.contextmanager
def running_server(
    bundle: str | Path, startup_timeout: float = 180.0, settings: dict[str, Any] | None = None, workers: int = 1
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``mmrec serve`` (:func:`server_command`) in a subprocess on a free 127.0.0.1 port, ready when yielded as
    (url, process); stopped (SIGINT, then kill after 30 s) on exit. ``process.startup_s`` is the time until /healthz
    answered and, with ``workers > 1``, every worker had started."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = server_command(bundle, port, settings, workers)
    here = str(Path(__file__).resolve().parents[1])  # the server imports this same package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}
    LOG.info("starting %s", " ".join(cmd))
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a chatty server can never block on a full pipe
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            t = time.perf_counter()
            try:
                _wait_ready(url, proc, startup_timeout)
            except UserError as e:
                log.seek(0)
                tail = [ln for ln in log.read().decode(errors="replace").splitlines() if ln.strip()][-1:]
                raise UserError(f"{e}{': ' + tail[0] if tail else ''}") from None
            if workers > 1:
                _wait_workers(log.fileno(), workers, max(10.0, startup_timeout - (time.perf_counter() - t)))
            proc.startup_s = time.perf_counter() - t  # type: ignore[attr-defined]
            yield url, proc
        finally:
            proc.send_signal(signal.SIGINT)  # uvicorn shuts down gracefully on SIGINT
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def request_bodies(
    catalog: Any, requests: int, k: int = 10, seed: int = 0, free_text: bool = False
) -> list[tuple[str, dict[str, Any]]]:
    """``bench serve``'s requests: alternately a /search for a catalog title (with `` clip`` appended when
    ``free_text``, so no stored item text answers it) and a /recommend over ``HISTORY_LEN`` titles."""
    texts = sample_texts(catalog, requests + HISTORY_LEN, seed)
    return [
        ("/search", {"query": f"{texts[i]} clip" if free_text else texts[i], "k": k})
        if i % 2 == 0
        else ("/recommend", {"history": texts[i : i + HISTORY_LEN], "k": k})
        for i in range(requests)
    ]


def bench_serve(
    bundle: str | Path,
    requests: int = 2000,
    concurrency: int = 16,
    k: int = 10,
    seed: int = 0,
    startup_timeout: float = 180.0,
    request_timeout: float = 60.0,
    settings: dict[str, Any] | None = None,
    workers: int = 1,
    inprocess: bool = True,
) -> dict[str, Any]:
    """Start ``mmrec serve --workers N`` on a free 127.0.0.1 port, send ``requests`` (half /search, half /recommend)
    with ``concurrency`` in flight, read the memory of the server's processes, stop it; throughput, p50/p99 latency
    and errors (non-200 or no hits). Then, unless ``inprocess`` is False, the same requests in this process
    (:mod:`.inprocess`): the best in-process throughput and ``http_vs_inprocess`` = HTTP / that.

    ``settings``: the server's ServeConfig fields; with them, search queries are titles + `` clip`` (free text, not
    a stored item text: bench.backends), histories stay titles."""
    import pandas as pd

    if requests < 1 or concurrency < 1 or workers < 1:
        raise UserError(f"requests, concurrency and workers must be >= 1, got {requests}, {concurrency}, {workers}")
    bundle = Path(bundle)
    if not (bundle / CATALOG_FILE).is_file():
        raise UserError(f"not a bundle (no {CATALOG_FILE}): {bundle}")
    bodies = request_bodies(pd.read_parquet(bundle / CATALOG_FILE), requests, k, seed, free_text=bool(settings))
    with running_server(bundle, startup_timeout, settings, workers) as (url, proc):
        LOG.info("server ready on %s; %d requests, %d in flight", url, requests, concurrency)
        asyncio.run(fire(url, bodies[: min(requests, 2 * concurrency)], concurrency, request_timeout))  # warm-up
        res = asyncio.run(fire(url, bodies, concurrency, request_timeout))
        memory, memory_note = server_memory(proc.pid, bundle)  # after the load: what serving it took
    all_lat = [x for v in res["lat"].values() for x in v]
    out: dict[str, Any] = {
        "bundle": str(bundle),
        "requests": requests,
        "concurrency": concurrency,
        "workers": workers,
        "k": k,
        "startup_s": round(proc.startup_s, 2),
        "seconds": round(res["seconds"], 3),
        "throughput_rps": round(requests / res["seconds"], 2),
        **latency_ms(all_lat),
        "endpoints": {path: {"requests": len(v), **latency_ms(v)} for path, v in sorted(res["lat"].items())},
        "errors": len(res["errors"]),
        "error_examples": sorted(set(res["errors"]))[:5],
        "server_exit_code": proc.returncode,
        "memory": memory,
        **({"memory_note": memory_note} if memory_note else {}),
    }
    if proc.returncode not in (0, -signal.SIGINT):
        LOG.warning("the server exited with code %s", proc.returncode)
    if inprocess:  # the server is stopped: it does not compete for the cores
        ip = bench_inprocess(bundle, bodies, concurrency, settings)
        out.update(inprocess=ip["configs"], inprocess_best=ip["best"], inprocess_best_rps=ip["best_rps"])
        out["http_vs_inprocess"] = round(out["throughput_rps"] / ip["best_rps"], 3)
    return out


def format_serve(r: dict[str, Any]) -> str:
    """Human-readable summary of :func:`bench_serve`."""
    lines = [
        f"{r['requests']} requests at concurrency {r['concurrency']} in {r['seconds']:.2f} s: "
        f"{r['throughput_rps']:.1f} requests/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
        f"{r['errors']} errors (server ready after {r['startup_s']:.1f} s)",
    ]
    for path, m in r["endpoints"].items():
        lines.append(f"  {path:<11}{m['requests']:>6} requests  p50 {m['p50_ms']:>8.1f} ms  p99 {m['p99_ms']:>8.1f} ms")
    lines.extend(f"  error: {e}" for e in r["error_examples"])
    lines.extend(format_memory(r.get("memory"), r.get("memory_note"), r["workers"]))
    if "inprocess" in r:
        lines.extend(format_inprocess(r["inprocess"]))
        lines.append(
            f"in-process best {r['inprocess_best_rps']:.1f} req/s ({r['inprocess_best']}), "
            f"HTTP / in-process = {r['http_vs_inprocess']:.3f} (goal >= {HTTP_GOAL})"
        )
    return "\n".join(lines)
