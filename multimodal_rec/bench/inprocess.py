"""In-process throughput of ``bench serve``'s requests: the figure the HTTP service is held against (issue 18).

The same (path, body) list the HTTP run sent goes through ``Recommender`` calls in this process, with threads each
taking the next request, after the same warm-up. Two configurations, each stated, the best kept:

- ``concurrency_threads``: as many threads as the HTTP run had requests in flight, torch's own thread count (the
  micro-batcher merges their concurrent query encodings, as in the server);
- ``core_threads``: one thread per core, each with one torch thread (``torch.set_num_threads(1)``, restored after).

Each loads its own ``Recommender`` under its torch thread count (ONNX Runtime's pool is ``serve.onnx_threads``: one
thread by default, or sized from torch's count on load when 0).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from multimodal_rec.bench.timing import latency_ms

LOG = logging.getLogger(__name__)
Request = tuple[str, dict[str, Any]]


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def call(rec: Any, path: str, body: dict[str, Any]) -> list[Any]:
    """The ``Recommender`` calls the HTTP endpoint ``path`` makes for ``body`` (serving.http); its hits."""
    if path == "/search":
        hits = rec.search(body["query"], body["k"])
        rec.query_info(body["query"])
        return hits
    if path == "/recommend":
        rec.resolve_history(body["history"])
        return rec.recommend(body["history"], body["k"])
    raise ValueError(f"no in-process call for {path}")


def fire(rec: Any, bodies: list[Request], threads: int) -> dict[str, Any]:
    """Every (path, body) through :func:`call` on ``threads`` threads, each taking the next; latency per request and
    errors (an exception or no hits, as the HTTP run counts them), in the shape of ``bench.serve._fire``'s answer."""
    lat: dict[str, list[float]] = {}
    errors: list[str] = []
    todo, lock = iter(bodies), threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                item = next(todo, None)
            if item is None:
                return
            path, body = item
            t = time.perf_counter()
            try:
                ok, why = bool(call(rec, path, body)), f"{path}: no hits"
            except Exception as e:
                ok, why = False, f"{path}: {type(e).__name__}"
            dt = time.perf_counter() - t
            with lock:
                lat.setdefault(path, []).append(dt)
                if not ok:
                    errors.append(why)

    pool = [threading.Thread(target=worker, name=f"bench-inprocess-{i}") for i in range(threads)]
    t = time.perf_counter()
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return {"lat": lat, "errors": errors, "seconds": time.perf_counter() - t}


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Torch's intra-op thread count set to ``n`` (None: left as is) inside the block, restored after; yields it."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def configs(concurrency: int) -> dict[str, tuple[int, int | None]]:
    """name -> (threads, torch threads or None for torch's own count): the configurations measured."""
    return {"concurrency_threads": (concurrency, None), "core_threads": (cores(), 1)}


def bench_inprocess(
    bundle: str | Path, bodies: list[Request], concurrency: int, settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Throughput of ``bodies`` in this process under each of :func:`configs`, the bundle loaded with the server's
    ServeConfig ``settings``; ``{"configs": {name: figures}, "best": name, "best_rps": req/s}``."""
    from multimodal_rec.serving.recommender import Recommender
    from multimodal_rec.serving.text_backends import ServeConfig

    out: dict[str, Any] = {}
    for name, (threads, n_torch) in configs(concurrency).items():
        with torch_threads(n_torch) as used:
            rec = Recommender.load(bundle, verify=False, serve=ServeConfig(**(settings or {})))
            fire(rec, bodies[: min(len(bodies), 2 * threads)], threads)  # warm-up, as the HTTP run's
            res = fire(rec, bodies, threads)
        all_lat = [x for v in res["lat"].values() for x in v]
        out[name] = {
            "threads": threads,
            "torch_threads": used,
            "seconds": round(res["seconds"], 3),
            "throughput_rps": round(len(bodies) / res["seconds"], 2),
            **latency_ms(all_lat),
            "errors": len(res["errors"]),
            "error_examples": sorted(set(res["errors"]))[:5],
        }
        LOG.info("in-process %s: %s", name, out[name])
    best = max(out, key=lambda n: out[n]["throughput_rps"])
    return {"configs": out, "best": best, "best_rps": out[best]["throughput_rps"]}


def format_inprocess(configs_run: dict[str, Any]) -> list[str]:
    """Text lines of :func:`bench_inprocess`'s ``configs``, one per configuration (and its errors)."""
    lines = []
    for name, m in configs_run.items():
        lines.append(
            f"  in-process {name}: {m['threads']} threads x {m['torch_threads']} torch threads: "
            f"{m['throughput_rps']:.1f} requests/s, p50 {m['p50_ms']:.1f} ms, p99 {m['p99_ms']:.1f} ms, "
            f"{m['errors']} errors"
        )
        lines.extend(f"    error: {e}" for e in m["error_examples"])
    return lines
