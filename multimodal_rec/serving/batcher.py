"""Micro-batching: texts from concurrent requests encoded in one forward pass, as inference servers do.

A caller that finds no pass running runs ``fn`` on its own texts at once, in its own thread (an idle service adds
no hop and no wait). Otherwise it queues its texts and waits: one worker thread takes every request queued (up to
``max_batch`` texts), runs ``fn`` once on all of them when the running pass ends, and hands each caller its rows; so
batches grow with the load. When the previous batch served more than one request (there is concurrency), the worker
also waits up to ``window_s`` for more before it starts a pass. One pass runs at a time.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

LOG = logging.getLogger(__name__)


class _Request:
    __slots__ = ("done", "error", "result", "texts")

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.done = threading.Event()
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None


class MicroBatcher:
    """``batcher(texts) -> fn(texts)``, with concurrent calls merged into one ``fn`` call (rows in call order).

    ``fn`` maps a list of texts to an array with one row per text; it runs one call at a time (in the caller's
    thread when nothing else runs, else on the worker thread), so it needs no lock of its own. An
    exception in ``fn`` is raised in every caller of that batch.
    """

    def __init__(self, fn: Callable[[list[str]], np.ndarray], window_s: float = 0.002, max_batch: int = 64) -> None:
        if max_batch < 1 or window_s < 0:
            raise ValueError(f"max_batch must be >= 1 and window_s >= 0, got {max_batch} and {window_s}")
        self.fn, self.window_s, self.max_batch = fn, float(window_s), int(max_batch)
        self._queue: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._start = threading.Lock()
        self._pass = threading.Lock()  # held while fn runs
        self._worker: threading.Thread | None = None
        self._carry: _Request | None = None  # taken from the queue but left for the next batch (it did not fit)
        self.batches = 0  # passes run, and requests served by them: the mean batch is requests / batches
        self.requests = 0

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        req = _Request(list(texts))
        if not req.texts:
            return self.fn([])
        if self._pass.acquire(blocking=False):  # nothing running: no reason to wait for company
            try:
                out = self.fn(req.texts)
                self.batches, self.requests = self.batches + 1, self.requests + 1  # counted under the pass lock
            finally:
                self._pass.release()
            return out
        self._ensure_worker()
        self._queue.put(req)
        req.done.wait()
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    def _ensure_worker(self) -> None:
        if self._worker is None:
            with self._start:
                if self._worker is None:
                    self._worker = threading.Thread(target=self._run, name="mmrec-microbatcher", daemon=True)
                    self._worker.start()

    def _take(self, last_size: int) -> list[_Request]:
        """The next batch: the carried-over request or the first queued (blocking), then all that fits."""
        first = self._carry or self._queue.get()
        self._carry = None
        batch, n = [first], len(first.texts)
        deadline = time.perf_counter() + (self.window_s if last_size > 1 else 0.0)
        while n < self.max_batch:
            wait = deadline - time.perf_counter()
            try:
                req = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if n + len(req.texts) > self.max_batch:
                self._carry = req
                break
            batch.append(req)
            n += len(req.texts)
        return batch

    def _run(self) -> None:
        last = 0
        while True:
            batch = self._take(last)
            last = len(batch)
            texts = [t for r in batch for t in r.texts]
            try:
                with self._pass:
                    out = self.fn(texts)
                    self.batches, self.requests = self.batches + 1, self.requests + len(batch)
            except BaseException as e:  # every caller of this batch gets it; the worker keeps serving
                for r in batch:
                    r.error = e
                    r.done.set()
                continue
            start = 0
            for r in batch:
                r.result = out[start : start + len(r.texts)]
                start += len(r.texts)
                r.done.set()
