"""Micro-batching (issue 18): concurrent requests share one trunk pass and get exactly their own rows."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from multimodal_rec.serving.batcher import MicroBatcher


def _slow_rows(texts: list[str]) -> np.ndarray:
    time.sleep(0.01)  # a pass takes a while: requests arriving meanwhile queue for the next
    return np.array([[float(len(t)), float(sum(map(ord, t)))] for t in texts], np.float32)


def test_concurrent_requests_are_batched_and_get_their_rows() -> None:
    b = MicroBatcher(_slow_rows, window_s=0.002, max_batch=8)
    requests = [[f"query {i}", f"item {i} {'x' * i}"] for i in range(40)]
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(b, requests))
    for texts, rows in zip(requests, got, strict=True):
        np.testing.assert_array_equal(rows, _slow_rows(texts))
    assert b.requests == 40 and b.batches < 40, "nothing was batched"


def test_batched_recommender_equals_one_by_one(bundle) -> None:
    """Search vectors and user vectors computed under 8 concurrent callers equal those computed one at a time."""
    from multimodal_rec.serving.recommender import Recommender
    from multimodal_rec.serving.text_backends import ServeConfig

    rec = Recommender.load(bundle, serve=ServeConfig(query_cache=0))
    texts = [f"{t} clip" for t in rec.catalog["title"].astype(str)[:24]]
    histories = [[texts[i], texts[i + 1]] for i in range(0, 24, 2)]
    alone = [rec.encode_queries([t]) for t in texts]
    alone_u = [rec.user_queries([h]) for h in histories]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda t: rec.encode_queries([t]), texts))
        together_u = list(pool.map(lambda h: rec.user_queries([h]), histories))
    np.testing.assert_allclose(np.concatenate(together), np.concatenate(alone), atol=1e-5)
    np.testing.assert_allclose(np.concatenate(together_u), np.concatenate(alone_u), atol=1e-5)
    stats = rec.query_features.stats()
    assert stats["trunk_batches"] < stats["trunk_requests"], stats


def test_concurrent_histories_share_user_tower_passes(bundle) -> None:
    """Histories of different lengths encoded under 8 concurrent callers: the same vectors and attention weights as
    one at a time (weights past a history's end are 0), in fewer user-tower passes than calls."""
    from multimodal_rec.serving.queries import QueryEncoder
    from multimodal_rec.serving.recommender import Recommender
    from multimodal_rec.serving.text_backends import ServeConfig

    rec = Recommender.load(bundle)
    enc = QueryEncoder(rec.model, ServeConfig(query_cache=0, batch_window_ms=5))
    texts = [f"{t} clip" for t in rec.catalog["title"].astype(str)[:30]]
    histories = [texts[i : i + 1 + i % 4] for i in range(24)]
    alone = [enc.encode_histories([h]) for h in histories]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda h: enc.encode_histories([h]), histories))
    for h, (u1, w1), (u8, w8) in zip(histories, alone, together, strict=True):
        n = len(h)
        np.testing.assert_allclose(u8, u1, atol=1e-5)
        np.testing.assert_allclose(w8[0, :n], w1[0, :n], atol=1e-5)
        assert not w8[0, n:].any() and w8[0, :n].sum() == pytest.approx(1.0, abs=1e-4)
    assert enc.user_batcher.batches < enc.user_batcher.requests, "no history was batched"


def test_an_error_reaches_every_caller_and_the_worker_survives() -> None:
    def fn(texts: list[str]) -> np.ndarray:
        if "boom" in texts:
            raise ValueError("boom")
        return np.zeros((len(texts), 1), np.float32)

    b = MicroBatcher(fn, window_s=0.0)
    with pytest.raises(ValueError, match="boom"):
        b(["boom"])
    assert b(["fine"]).shape == (1, 1)


def test_oversized_request_runs_alone() -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def fn(texts: list[str]) -> np.ndarray:
        with lock:
            seen.append(len(texts))
        return np.arange(len(texts), dtype=np.float32)[:, None]

    b = MicroBatcher(fn, window_s=0.0, max_batch=4)
    out = b([str(i) for i in range(10)])
    assert out[:, 0].tolist() == list(range(10)) and seen == [10]
