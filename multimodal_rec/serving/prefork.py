"""Several HTTP worker processes over one loaded bundle: load once, then fork (``mmrec serve --workers N``).

uvicorn's own ``--workers`` starts each worker as a fresh interpreter that loads the bundle itself: N copies of
everything a load builds in memory (the catalog frame, the id and title maps, the lexical index, the model; ~1.3 GB
per worker at 1M videos besides the memory-mapped arrays) and N start-ups. Here the supervisor loads the bundle once
and forks the workers, as gunicorn's ``--preload`` does: every page of the loaded state is shared copy-on-write,
and a worker pays only for the pages it writes (its request buffers, its thread stacks, objects whose reference
counts its requests touch). ``gc.freeze()`` before the fork keeps the collector from writing to every shared object.

Fork safety. A thread pool's threads do not survive a fork: a child that enters an OpenMP pool its parent had
started hangs (GNU OpenMP waits for the parent's threads forever: a torch matmul in a child did, tried), and an ONNX
Runtime session opened with a pool before the fork answered in a child here (whether its pool helped: unchecked).
So the supervisor loads with one torch thread and one FAISS thread (neither starts a pool) and never serves a
request; each worker sets its own share of the cores after the fork and reopens the ONNX Runtime session (opened
with one thread by the supervisor) with its own pool.

A worker that dies is forked again from the loaded state (seconds, no reload); SIGINT / SIGTERM stop every worker
gracefully, then the supervisor.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

from multimodal_rec.errors import UserError

LOG = logging.getLogger(__name__)
STOP_TIMEOUT_S = 30.0  # a worker still running this long after the stop signal is killed
QUICK_EXIT_S = 10.0  # a worker that exits this soon after its start, QUICK_EXITS times in a row, cannot start:
QUICK_EXITS = 3  # the server stops instead of forking it again
_POLL_S = 0.2


def set_threads(n: int) -> None:
    """torch's and FAISS's thread counts (their OpenMP runtimes are separate)."""
    import torch

    torch.set_num_threads(n)
    with contextlib.suppress(ImportError):
        import faiss

        faiss.omp_set_num_threads(n)


def serve_preloaded(
    load: Callable[[], Any],
    make_app: Callable[[Any], Any],
    workers: int,
    threads: tuple[int, int],
    options: dict[str, Any],
) -> None:
    """``load()`` once with one torch and one FAISS thread (nothing it runs starts a pool, so this process may fork),
    then :func:`serve_forked` over it; this process's thread counts are restored when the server stops."""
    import torch

    before = torch.get_num_threads()
    set_threads(1)
    try:
        rec = load()
        gc.collect()
        gc.freeze()  # the loaded objects move to a generation the collector never scans: their pages stay shared
        serve_forked(rec, make_app, workers, threads, options)
    finally:
        gc.unfreeze()
        set_threads(before)


def reopen_trunk(rec: Any, threads: int) -> None:
    """The ONNX Runtime session of ``rec``'s text trunk with ``threads`` threads, when it has another count (a
    session's pool starts with it: the supervisor opens it with one, a worker reopens it with its own)."""
    trunk = getattr(rec.query_features, "trunk", None)
    if hasattr(trunk, "reopen") and trunk.threads != threads:
        trunk.reopen(threads)


def serve_forked(
    rec: Any, make_app: Callable[[Any], Any], workers: int, threads: tuple[int, int], options: dict[str, Any]
) -> None:
    """Serve ``make_app(rec)`` from ``workers`` forked processes on one listening socket until SIGINT / SIGTERM.

    ``rec`` was loaded with no thread pool started (:func:`serve_preloaded`); ``threads``: each worker's (torch and
    FAISS, ONNX Runtime) threads; ``options``: uvicorn.Config keyword arguments (host, port, ...). The app is built
    in each worker."""
    import uvicorn

    sock = uvicorn.Config(app=None, **options).bind_socket()  # bound once, inherited by every worker
    children: dict[int, tuple[int, float]] = {}  # pid -> (worker number, start time)
    stopping: list[int] = []  # the signal that stops the server, once one came

    def start(i: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the supervisor's code
            code = 1
            try:
                _worker(rec, make_app, threads, options, sock)
                code = 0
            except BaseException:
                LOG.exception("worker %d failed", i)
            finally:
                os._exit(code)
        children[pid] = (i, time.monotonic())

    def stop(sig: int, frame: Any) -> None:
        if not stopping:
            stopping.append(sig)
            _kill(children, signal.SIGTERM)  # uvicorn finishes the requests in flight, then exits

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for i in range(workers):
            start(i)
        LOG.info("%d workers forked from one loaded bundle (pids %s)", workers, ", ".join(map(str, children)))
        _supervise(children, start, stopping)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        sock.close()


def _supervise(children: dict[int, tuple[int, float]], start: Callable[[int], None], stopping: list[int]) -> None:
    """Reap workers until none is left. One that dies while serving is forked again; one that keeps exiting right
    after its start (:data:`QUICK_EXITS` times in a row) stops the server with a UserError; a stop signal waits for
    every worker (the stragglers killed after :data:`STOP_TIMEOUT_S`)."""
    quick: dict[int, int] = {}  # worker number -> exits in a row within QUICK_EXIT_S of its start
    deadline: float | None = None
    while children:
        pid, status = next(_exited(children), (0, 0))
        if pid == 0:  # nobody exited
            if stopping and deadline is None:
                deadline = time.monotonic() + STOP_TIMEOUT_S
            if deadline is not None and time.monotonic() > deadline:
                LOG.warning("killing %d worker(s) still running %.0f s after the stop", len(children), STOP_TIMEOUT_S)
                _kill(children, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(_POLL_S)
            continue
        i, started = children.pop(pid)
        if stopping:
            continue
        code = os.waitstatus_to_exitcode(status)
        quick[i] = quick.get(i, 0) + 1 if time.monotonic() - started < QUICK_EXIT_S else 0
        if quick[i] >= QUICK_EXITS:
            stopping.append(0)
            _kill(children, signal.SIGTERM)
            _reap(children)
            raise UserError(f"worker {i} exited with code {code} right after its start, {quick[i]} times in a row")
        LOG.warning("worker %d (pid %d) exited with code %s: forking it again", i, pid, code)
        time.sleep(_POLL_S * quick[i])
        start(i)


def _exited(children: dict[int, tuple[int, float]]) -> Iterator[tuple[int, int]]:
    """(pid, wait status) of each of ``children`` that has exited (only ours: other children of this process are
    left to whoever started them)."""
    for pid in list(children):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            yield done, status


def _kill(children: dict[int, tuple[int, float]], sig: int) -> None:
    for p in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)


def _reap(children: dict[int, tuple[int, float]]) -> None:
    """Wait up to STOP_TIMEOUT_S for ``children`` to exit, then kill the rest."""
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while children and time.monotonic() < deadline:
        gone = [pid for pid, _ in _exited(children)]
        for pid in gone:
            children.pop(pid)
        if not gone:
            time.sleep(_POLL_S)
    _kill(children, signal.SIGKILL)


def _worker(
    rec: Any, make_app: Callable[[Any], Any], threads: tuple[int, int], options: dict[str, Any], sock: Any
) -> None:
    """One worker, after the fork: default signal handling (uvicorn installs its own), its threads, its app."""
    import uvicorn

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)
    set_threads(threads[0])
    reopen_trunk(rec, threads[1])
    uvicorn.Server(uvicorn.Config(make_app(rec), **options)).run(sockets=[sock])
