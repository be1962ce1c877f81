"""FAISS index over the catalog embeddings: numpy in, numpy out (``xb``, ``xq``, ``D``, ``I``).

The index type follows the FAISS guidelines for the catalog size (:func:`choose_factory`): exact ``Flat`` for
small catalogs, ``HNSW32`` for mid-sized ones, IVF (+PQ with exact re-ranking) for large ones. Search-time
parameters (``nprobe``, ``efSearch``, ``k_factor``) are set from the size when the index is built and live in
the index object itself, so they survive ``faiss.write_index`` / ``read_index`` and a search needs nothing extra.
Every index uses the inner-product metric (L2-normalised vectors, optionally with a small popularity-prior column).
Searching lives in :mod:`multimodal_rec.index.search`, shards in :mod:`multimodal_rec.index.shards`.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np

LOG = logging.getLogger(__name__)

FLAT_MAX_NB = 50_000  # below: exact search (a 50k x 129 scan is ~1 ms per query)
HNSW_MAX_NB = 1_000_000  # below: HNSW32; at and above: IVF (HNSW memory and build time grow too much)
HNSW_M = 32
PQ_MAX_DSUB = 8  # at most this many dims per PQ sub-quantizer, else IVF-Flat (coarser PQ loses too much)
# 4-bit fast-scan PQ: trains ~16x faster than x8 (16 centroids per sub-quantizer, not 256) and scans with SIMD;
# the exact re-rank (RFlat, k_factor) recovers the recall the coarser codes lose.
PQ_CODE = "x4fs"
# IVF training sample: at most 64 vectors per list (k-means cost 4x below FAISS's 256, same recall measured at
# 200k), but at least 16k so 8-bit PQ sub-quantizers get their 39 * 256 points.
TRAIN_PER_LIST = 64
TRAIN_MIN = 16_384
SEARCH_PARAMS = ("nprobe", "efSearch", "k_factor")


def ivf_nlist(nb: int) -> int:
    """Number of inverted lists: 4 * sqrt(nb) rounded to a power of two, at most nb / 39 (k-means minimum)."""
    nlist = 2 ** round(math.log2(max(1.0, 4.0 * math.sqrt(max(nb, 1)))))
    cap = 2 ** int(math.log2(max(1, nb // 39)))  # FAISS warns below 39 training points per centroid
    return max(1, min(nlist, cap))


def pq_m(d: int) -> int | None:
    """PQ sub-quantizer count: the largest ``m <= d / 2`` dividing ``d``; None when only tiny ``m`` fit (prime d)."""
    m = next((m for m in range(d // 2, 1, -1) if d % m == 0), None)
    if m is None or d // m > PQ_MAX_DSUB:
        return None
    return m


def choose_factory(nb: int, d: int) -> str:
    """FAISS factory string for ``nb`` vectors of dim ``d``: Flat, HNSW32, or IVF-PQ + exact re-rank (IVF-Flat)."""
    if nb < FLAT_MAX_NB:
        return "Flat"
    if nb < HNSW_MAX_NB:
        return f"HNSW{HNSW_M}"
    nlist, m = ivf_nlist(nb), pq_m(d)
    return f"IVF{nlist},Flat" if m is None else f"IVF{nlist},PQ{m}{PQ_CODE},RFlat"


def hnsw_ef_construction(nb: int) -> int:
    """HNSW build-time beam: 80 (FAISS's 40 leaves tight clusters badly linked), 128 above 1M vectors."""
    return 80 if nb <= 1_000_000 else 128


def hnsw_ef_search(nb: int) -> int:
    """HNSW search beam: grows with log(nb) (recall@10 >= 0.95 on clustered data, see bench_index)."""
    return 64 if nb <= 100_000 else 128 if nb <= 1_000_000 else 256


def ivf_nprobe(nlist: int) -> int:
    """Inverted lists visited per query: nlist / 64, at least 16 (recall@10 >= 0.95 on clustered data)."""
    return max(1, min(nlist, max(16, nlist // 64)))


def refine_k_factor(nb: int) -> int:
    """IVF-PQ + RFlat re-ranks ``k_factor * k`` PQ candidates exactly: 16 at 20k, 32 at 100k, 256 at 1M, <= 512.

    Grows with nb because more near-ties compete for the top k under the coarse 4-bit codes. The exact re-rank is
    cheap (256 * 10 dot products: ~0.1 ms), so the shortlist is generous: on 1M vectors that are near-copies of a
    real catalog's (``mmrec bench grow``), 64 kept recall@10 at 0.85 and 256 at 0.98, for the same latency.
    """
    return int(min(512, max(16, 2 ** round(math.log2(max(1.0, nb / 4_000))))))


def _layers(index: Any) -> list[Any]:
    """The index and the indexes it wraps (pre-transform, refine, id map), each downcast to its real type."""
    import faiss

    out, cur = [], index
    while cur is not None:
        cur = faiss.downcast_index(cur)
        out.append(cur)
        if isinstance(cur, faiss.IndexRefine):
            cur = cur.base_index
        elif isinstance(cur, faiss.IndexPreTransform | faiss.IndexIDMap | faiss.IndexIDMap2):
            cur = cur.index
        else:
            cur = None
    return out


def _find(index: Any, cls_name: str) -> Any | None:
    import faiss

    cls = getattr(faiss, cls_name)
    return next((x for x in _layers(index) if isinstance(x, cls)), None)


def default_search_params(index: Any, nb: int | None = None) -> dict[str, int]:
    """Search-time parameters for ``index`` sized to ``nb`` (default: ``index.ntotal``); empty for Flat."""
    nb = index.ntotal if nb is None else nb
    params: dict[str, int] = {}
    ivf = _find(index, "IndexIVF")
    if ivf is not None:
        params["nprobe"] = ivf_nprobe(ivf.nlist)
    if _find(index, "IndexHNSW") is not None:
        params["efSearch"] = hnsw_ef_search(nb)
    if _find(index, "IndexRefine") is not None:
        params["k_factor"] = refine_k_factor(nb)
    return params


def set_search_params(index: Any, **params: float) -> Any:
    """Set ``nprobe`` / ``efSearch`` / ``k_factor`` on whichever layer has them; returns ``index``.

    The values are stored in the index (and persist through ``faiss.write_index``), so later searches
    use them. Not thread-safe against concurrent searches on the same index.
    """
    unknown = set(params) - set(SEARCH_PARAMS)
    if unknown:
        raise ValueError(f"unknown search parameters {sorted(unknown)}; known: {SEARCH_PARAMS}")
    for layer in _layers(index):
        if "nprobe" in params and hasattr(layer, "nprobe") and hasattr(layer, "nlist"):
            layer.nprobe = int(min(params["nprobe"], layer.nlist))
            quantizer = _find(layer.quantizer, "IndexHNSW")  # IVF..._HNSW: the coarse beam must cover nprobe
            if quantizer is not None:
                quantizer.hnsw.efSearch = max(quantizer.hnsw.efSearch, 2 * layer.nprobe)
        if "efSearch" in params and hasattr(layer, "hnsw"):
            layer.hnsw.efSearch = int(params["efSearch"])
        if "k_factor" in params and hasattr(layer, "k_factor"):
            layer.k_factor = float(params["k_factor"])
    return index


def get_search_params(index: Any) -> dict[str, float]:
    """The search-time parameters currently stored in ``index`` (empty for Flat)."""
    out: dict[str, float] = {}
    for layer in _layers(index):
        if hasattr(layer, "nprobe") and hasattr(layer, "nlist"):
            out["nprobe"] = int(layer.nprobe)
        if hasattr(layer, "hnsw"):
            out["efSearch"] = int(layer.hnsw.efSearch)
        if hasattr(layer, "k_factor"):
            out["k_factor"] = float(layer.k_factor)
    return out


def build_index(
    xb: np.ndarray, factory: str = "auto", *, seed: int = 0, ids: np.ndarray | None = None, **params: float
) -> Any:
    """Inner-product index over ``xb [nb, d]`` (ids = row numbers, or ``ids`` through an ``IndexIDMap``).

    ``factory="auto"`` picks by size (:func:`choose_factory`); any other string is a FAISS factory string used
    as is. IVF is trained on a seeded sample of at most 64 vectors per list (at least 16k). Search parameters default to
    :func:`default_search_params`; ``params`` (``nprobe``, ``efSearch``, ``k_factor``, and ``efConstruction``
    for HNSW) override them.
    """
    import faiss

    xb = np.ascontiguousarray(xb, dtype=np.float32)
    nb, d = xb.shape
    if factory == "auto":
        factory = choose_factory(nb, d)
    ef_construction = int(params.pop("efConstruction", hnsw_ef_construction(nb)))
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    for layer in _layers(index):
        if hasattr(layer, "hnsw"):
            layer.hnsw.efConstruction = ef_construction
        if isinstance(layer, faiss.IndexIVFPQ):
            layer.do_polysemous_training = False  # on by default, slow, and unused by our searches
    if not index.is_trained:
        ivf = _find(index, "IndexIVF")
        n_train = min(nb, max(TRAIN_MIN, TRAIN_PER_LIST * ivf.nlist)) if ivf is not None else nb
        sample = xb if n_train >= nb else xb[np.sort(np.random.default_rng(seed).choice(nb, n_train, replace=False))]
        index.train(sample)
    if ids is None:
        index.add(xb)
    else:
        index = faiss.IndexIDMap(index)  # wraps the trained, empty index; search returns ``ids``
        index.add_with_ids(xb, np.ascontiguousarray(ids, dtype=np.int64))
    set_search_params(index, **{**default_search_params(index, nb), **params})
    LOG.info("built %s index: %d vectors of dim %d, search params %s", factory, nb, d, get_search_params(index))
    return index


def to_gpu(index: Any) -> Any:
    """A copy of ``index`` on every visible GPU (replicated); the CPU index itself when there is no GPU.

    Falls back to the CPU index (with a warning) for types FAISS cannot clone to the GPU (HNSW, refine
    wrappers, PQ sizes the GPU lacks). Not called by default.
    """
    import faiss

    ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if ngpu <= 0:
        LOG.info("no GPU visible to FAISS: keeping the CPU index")
        return index
    try:
        gpu_index = faiss.index_cpu_to_all_gpus(index)
    except RuntimeError as e:
        LOG.warning("cannot move %s to the GPU (%s): keeping the CPU index", type(index).__name__, e)
        return index
    nprobe = get_search_params(index).get("nprobe")
    if nprobe is not None:
        try:
            faiss.GpuParameterSpace().set_index_parameter(gpu_index, "nprobe", nprobe)
        except RuntimeError as e:
            LOG.warning("could not set nprobe=%s on the GPU index: %s", nprobe, e)
    LOG.info("index on %d GPU(s)", ngpu)
    return gpu_index


def read_index(path: str | os.PathLike[str], mmap: bool = True) -> Any:
    """Read an index written by ``faiss.write_index``; with ``mmap`` its vectors stay in the page cache.

    Memory-mapped, several worker processes share one copy of the vectors (Flat, HNSW storage, IVF lists,
    refine vectors; HNSW links are still read into memory). A mapped index is READ-ONLY: ``add`` on it aborts
    the process (a FAISS assertion), and the file must not be rewritten in place while mapped (replace it by
    rename). Falls back to a normal read where mapping is not supported.
    """
    import faiss

    path = os.fspath(path)
    if mmap:
        flags = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP)  # _IFC also maps Flat/HNSW/IVF arrays
        try:
            return faiss.read_index(path, flags)
        except RuntimeError as e:
            LOG.info("cannot memory-map %s (%s): reading it into memory", path, e)
    return faiss.read_index(path)


def _nbytes(index: Any) -> int:
    """Approximate resident bytes of ``index`` (codes, ids, graph links, quantizers), without serializing it."""
    import faiss

    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexShards):
        return sum(_nbytes(index.at(i)) for i in range(index.count()))
    if isinstance(index, faiss.IndexRefine):
        return _nbytes(index.base_index) + _nbytes(index.refine_index)
    if isinstance(index, faiss.IndexPreTransform):
        return _nbytes(index.index)
    if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
        return _nbytes(index.index) + 8 * index.ntotal
    if isinstance(index, faiss.IndexHNSW):
        h = index.hnsw
        return _nbytes(index.storage) + 4 * (h.neighbors.size() + h.levels.size()) + 8 * h.offsets.size()
    if isinstance(index, faiss.IndexIVF):
        return index.ntotal * (index.code_size + 8) + _nbytes(index.quantizer)
    if hasattr(index, "code_size"):
        return index.ntotal * index.code_size
    return index.ntotal * index.d * 4


def describe(index: Any) -> dict[str, Any]:
    """Summary for logs and health checks: type chain, ntotal, d, metric, search params, IVF lists, byte estimate."""
    import faiss

    layers = _layers(index)
    out: dict[str, Any] = {
        "type": "/".join(type(x).__name__ for x in layers),
        "ntotal": int(index.ntotal),
        "d": int(index.d),
        "metric": "inner_product" if index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2",
        **get_search_params(index),
        "bytes": int(_nbytes(index)),
    }
    ivf = _find(index, "IndexIVF")
    if ivf is not None:
        out["nlist"] = int(ivf.nlist)
    hnsw = _find(index, "IndexHNSW")
    if hnsw is not None:
        out["efConstruction"] = int(hnsw.hnsw.efConstruction)
    return out
