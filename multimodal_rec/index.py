"""FAISS index over the catalog embeddings: numpy in, numpy out (``xb``, ``xq``, ``D``, ``I``)."""

from __future__ import annotations

import logging

import numpy as np

LOG = logging.getLogger(__name__)


def build_index(xb: np.ndarray, factory: str = "Flat"):  # -> faiss.Index
    """Inner-product index over L2-normalised ``xb [nb, d]`` (cosine similarity), ids = row numbers."""
    import faiss

    xb = np.ascontiguousarray(xb, dtype=np.float32)
    nb, d = xb.shape
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(xb)
    index.add(xb)
    LOG.info("built %s index: %d vectors of dim %d", factory, nb, d)
    return index


def search(index, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` by inner product: ``D [nq, k]`` scores and ``I [nq, k]`` row ids (-1 where fewer exist)."""
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    return index.search(xq, min(k, max(1, index.ntotal)))


def exact_search(xb: np.ndarray, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force numpy reference for tests and evaluation."""
    scores = xq @ xb.T  # [nq, nb]
    k = min(k, xb.shape[0])
    I = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # noqa: E741 (FAISS vocabulary)
    return np.take_along_axis(scores, I, axis=1), I
