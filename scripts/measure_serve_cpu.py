"""Where the CPU of an HTTP request goes: the server's processes against the load generator, per request.

Usage: python scripts/measure_serve_cpu.py BUNDLE [--requests 1000] [--concurrency 16] [--set KEY=VALUE ...]
Starts ``mmrec serve`` (as ``mmrec bench serve`` does), sends half /search, half /recommend (catalog titles), and
reads the CPU time (user + system, from /proc, Linux only) of the server process and of this process around the
timed run. ``--set``: ServeConfig fields for the server (e.g. text_backend=onnx-int8 query_cache=0; with any, search
queries get " clip" appended so they are free text).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time
from pathlib import Path

import pandas as pd

from multimodal_rec.bench.loadgen import fire
from multimodal_rec.bench.serve import request_bodies, running_server
from multimodal_rec.bundle import CATALOG_FILE


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (its own threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    a = p.parse_args()
    settings = dict(kv.split("=", 1) for kv in a.set) or None
    bodies = request_bodies(pd.read_parquet(Path(a.bundle) / CATALOG_FILE), a.requests, free_text=bool(settings))
    with running_server(a.bundle, 180, settings) as (url, proc):
        asyncio.run(fire(url, bodies[: 4 * a.concurrency], a.concurrency, 60))  # warm-up
        s0, r0, t0 = cpu_seconds(proc.pid), resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        res = asyncio.run(fire(url, bodies, a.concurrency, 60))
        s1, r1, t1 = cpu_seconds(proc.pid), resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    client = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    n = a.requests
    print(
        f"{n} requests in {t1 - t0:.2f} s = {n / (t1 - t0):.1f} req/s; "
        f"server CPU {1e3 * (s1 - s0) / n:.2f} ms/request, "
        f"load generator CPU {1e3 * client / n:.2f} ms/request, {len(res['errors'])} errors"
    )


if __name__ == "__main__":
    main()
