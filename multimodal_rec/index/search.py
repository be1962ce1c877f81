"""Searching a FAISS index: plain top-k, the exact numpy reference, and masked (filtered) search.

Numpy in, numpy out (``xq``, ``xb``, ``D``, ``I``). A filter runs inside the FAISS search as an ID selector
(:func:`selector_params`), with an exact scan over the passing rows where that is cheaper or the approximate walk
comes back short.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

LOG = logging.getLogger(__name__)
EXACT_SUBSET_MAX = 4096  # at most this many passing rows: exact scan over them (cheaper than a filtered graph walk)


def search(index: Any, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` by inner product: ``D [nq, k]`` scores and ``I [nq, k]`` row ids (-1 where fewer exist)."""
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    return index.search(xq, min(k, max(1, index.ntotal)))


def exact_search(xb: np.ndarray, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force numpy reference for tests and evaluation."""
    scores = xq @ xb.T  # [nq, nb]
    k = min(k, xb.shape[0])
    I = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # noqa: E741 (FAISS vocabulary)
    return np.take_along_axis(scores, I, axis=1), I


def selector_params(index: Any, sel: Any) -> Any:
    """FAISS ``SearchParameters`` that restrict ``index``'s search to ``sel``, keeping its stored search params.

    Per-call parameters replace the values stored in the index (their defaults are nprobe=1, efSearch=16), so the
    stored ``nprobe`` / ``efSearch`` / ``k_factor`` are copied in. Works for Flat, HNSW, IVF and IVF-PQ + refine.
    """
    import faiss

    top = faiss.downcast_index(index)
    if isinstance(top, faiss.IndexRefine):
        base = selector_params(top.base_index, sel)
        return faiss.IndexRefineSearchParameters(k_factor=float(top.k_factor), base_index_params=base, sel=sel)
    if isinstance(top, faiss.IndexIVF):
        return faiss.SearchParametersIVF(sel=sel, nprobe=int(top.nprobe))
    if isinstance(top, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=sel, efSearch=int(top.hnsw.efSearch))
    if isinstance(top, faiss.IndexFlatCodes):
        return faiss.SearchParameters(sel=sel)
    raise ValueError(f"filtered search is not supported for {type(top).__name__}")


def search_masked(
    index: Any, xb: np.ndarray, xq: np.ndarray, k: int, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` among the rows where ``mask`` is True: ``D, I [nq, min(k, passing)]`` (row ids of ``xb``).

    The restriction runs inside the FAISS search (an ``IDSelectorBitmap``), so ``k`` hits come back whenever at
    least ``k`` rows pass. ``xb`` (what the index holds) is the exact fallback: few passing rows are scanned
    directly, and a query for which the approximate walk found fewer than ``k`` passing rows (HNSW or IVF under a
    very selective filter) is answered exactly over the passing rows.
    """
    import faiss

    xq = np.ascontiguousarray(xq, dtype=np.float32)
    if mask is None:
        return search(index, xq, k)
    rows = np.flatnonzero(mask)
    k = min(k, len(rows))
    if k == 0:
        return np.zeros((len(xq), 0), np.float32), np.zeros((len(xq), 0), np.int64)
    if len(rows) <= EXACT_SUBSET_MAX:
        D, I = exact_search(xb[rows], xq, k)  # noqa: E741
        return D, rows[I]
    bits = np.packbits(mask, bitorder="little")  # FAISS reads bit i of the bitmap as (bits[i >> 3] >> (i & 7)) & 1
    sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
    try:
        D, I = index.search(xq, k, params=selector_params(index, sel))  # noqa: E741
    except (ValueError, RuntimeError) as e:  # an index type without selector support: scan the passing rows
        LOG.warning("filtered search falls back to an exact scan: %s", str(e).splitlines()[0] if str(e) else e)
        D, I = exact_search(xb[rows], xq, k)  # noqa: E741
        return D, rows[I]
    short = np.flatnonzero((I < 0).any(axis=1))
    if len(short):
        LOG.debug("filtered search: %d of %d queries short of %d hits, answered exactly", len(short), len(xq), k)
        De, Ie = exact_search(xb[rows], xq[short], k)
        D[short], I[short] = De, rows[Ie]
    return D, I
