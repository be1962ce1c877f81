"""Index benchmark on synthetic clustered vectors: build time, memory, latency, throughput, recall@k vs exact.

Answers "which FAISS index for a catalog of this size" with numbers: every candidate (Flat, HNSW32, IVF-Flat,
IVF-PQ + exact re-rank, and the :func:`~multimodal_rec.index.build.choose_factory` default) over a sweep of its
search parameters (efSearch, nprobe, k_factor), the default row marked and checked against recall@10 >= 0.95.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from multimodal_rec.errors import UserError
from multimodal_rec.index.build import (
    HNSW_M,
    PQ_CODE,
    build_index,
    choose_factory,
    default_search_params,
    describe,
    get_search_params,
    ivf_nlist,
    pq_m,
    set_search_params,
)
from multimodal_rec.index.search import search

LOG = logging.getLogger(__name__)

N_CLUSTERS = 1000
CLUSTER_SPREAD = 1.0  # noise norm relative to the (unit) cluster centre
NPROBES = (1, 4, 16, 64, 256)
EF_SEARCHES = (16, 32, 64, 128, 256)
K_FACTORS = (1, 4, 16, 64, 256)
N_SINGLE = 200  # single-query latency sample
BATCH = 64
RECALL_TARGET = 0.95
# A bundle's index holds embed_dim (256 in the default config and the `base` preset meant for real catalogs)
# plus one popularity-prior column: 257 dims. (The `small` demo preset: 128 + 1 = 129.)
DEFAULT_DIM = 257
CANDIDATES = ("flat", "hnsw", "ivf", "ivfpq")  # aliases, resolved per catalog size by resolve_candidates


def clustered_vectors(n: int, d: int, seed: int = 0, stream: int = 0, n_clusters: int = N_CLUSTERS) -> np.ndarray:
    """``[n, d]`` L2-normalised points around ``n_clusters`` random unit centres (fixed by ``seed``).

    ``stream`` picks independent draws from the same distribution: base ``stream=0``, queries ``stream=1``.
    """
    centres = np.random.default_rng(seed).normal(size=(n_clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng((seed, stream + 1))
    out = np.empty((n, d), dtype=np.float32)
    chunk = 100_000
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x = centres[rng.integers(0, n_clusters, m)]
        x += rng.standard_normal((m, d), dtype=np.float32) * np.float32(CLUSTER_SPREAD / np.sqrt(d))
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def exact_knn(xb: np.ndarray, xq: np.ndarray, k: int, chunk: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-``k`` with ``faiss.IndexFlatIP`` over base chunks (bounded extra memory)."""
    import faiss

    heap = faiss.ResultHeap(xq.shape[0], k, keep_max=True)
    for s in range(0, xb.shape[0], chunk):
        flat = faiss.IndexFlatIP(xb.shape[1])
        flat.add(xb[s : s + chunk])
        D, I = flat.search(xq, k)  # noqa: E741
        heap.add_result(D, np.where(I >= 0, I + s, -1))
    heap.finalize()
    return heap.D, heap.I


def recall_at_k(I: np.ndarray, I_ref: np.ndarray, k: int) -> float:  # noqa: E741
    """Mean fraction of the exact top-``k`` found in the approximate top-``k``."""
    hits = [len(set(a[:k].tolist()) & set(b[:k].tolist()) - {-1}) for a, b in zip(I, I_ref, strict=True)]
    return float(np.mean(hits) / k)


def resolve_candidates(nb: int, d: int, names: Sequence[str] | None = None) -> list[str]:
    """Factory strings to benchmark at size ``nb``: aliases (flat, hnsw, ivf, ivfpq) or factory strings as given.

    Default: all four aliases (ivfpq only where :func:`~multimodal_rec.index.build.pq_m` finds a PQ size for ``d``).
    The :func:`~multimodal_rec.index.build.choose_factory` default is always added.
    """
    nlist, m = ivf_nlist(nb), pq_m(d)
    alias = {"flat": "Flat", "hnsw": f"HNSW{HNSW_M}", "ivf": f"IVF{nlist},Flat"}
    if m is not None:
        alias["ivfpq"] = f"IVF{nlist},PQ{m}{PQ_CODE},RFlat"
    out: list[str] = []
    for name in CANDIDATES if names is None else names:
        key = name.lower()
        if key == "ivfpq" and m is None:
            if names is not None:
                LOG.warning("no PQ size divides d=%d: skipping the ivfpq candidate", d)
            continue
        factory = alias.get(key, name)
        if factory not in out:
            out.append(factory)
    default = choose_factory(nb, d)
    return out if default in out else [*out, default]


def _sweep(index: Any, default: dict[str, float]) -> list[dict[str, float]]:
    """Search-parameter settings to measure: each knob swept with the others at their default, plus the default."""
    import faiss

    out = [default]
    if "nprobe" in default:
        nlist = faiss.extract_index_ivf(index).nlist
        out += [{**default, "nprobe": v} for v in sorted({p for p in NPROBES if p <= nlist})]
    if "efSearch" in default:
        out += [{**default, "efSearch": v} for v in EF_SEARCHES]
    if "k_factor" in default:
        out += [{**default, "k_factor": v} for v in K_FACTORS]
    unique: list[dict[str, float]] = []
    for p in out:
        if p not in unique:
            unique.append(p)
    return sorted(unique, key=lambda p: tuple(p.values()))


def _measure(index: Any, xq: np.ndarray, k: int, I_ref: np.ndarray) -> dict[str, float]:
    """p50/p99 single-query latency, batch-64 throughput and recall@k for the index's current parameters."""
    search(index, xq[:BATCH], k)  # warm up
    lat = []
    for i in range(min(N_SINGLE, xq.shape[0])):
        t = time.perf_counter()
        search(index, xq[i : i + 1], k)
        lat.append(time.perf_counter() - t)
    t = time.perf_counter()
    I = np.concatenate([search(index, xq[s : s + BATCH], k)[1] for s in range(0, xq.shape[0], BATCH)])  # noqa: E741
    elapsed = time.perf_counter() - t
    return {
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p99_ms": float(np.percentile(lat, 99) * 1e3),
        "qps": float(xq.shape[0] / elapsed),
        "recall": recall_at_k(I, I_ref, k),
    }


def bench_index(
    sizes: Sequence[int] = (100_000, 1_000_000),
    d: int = DEFAULT_DIM,
    nq: int = 1000,
    k: int = 10,
    seed: int = 0,
    candidates: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Benchmark candidate indexes on clustered data of each size in ``sizes``; one row per (index, parameters).

    Rows: ``nb, factory, params, build_s, bytes, p50_ms, p99_ms, qps, recall, default`` (True on the
    :func:`choose_factory` index at its default parameters); recall@k is against exact search (``exact_knn``)
    on the same queries. ``candidates`` (aliases or factory strings, see :func:`resolve_candidates`) limits what
    is built; the default choice is always added. ``checks`` holds, per size, the default's recall against the
    0.95 target.
    """
    import faiss

    if not sizes or any(nb < 1000 for nb in sizes):
        raise UserError(f"sizes must be at least 1000 vectors each, got {list(sizes)}")
    if d < 2 or nq < 1 or k < 1:
        raise UserError(f"need d >= 2, nq >= 1 and k >= 1, got d={d} nq={nq} k={k}")
    rows: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    xq = clustered_vectors(nq, d, seed=seed, stream=1)
    for nb in sizes:
        xb = clustered_vectors(nb, d, seed=seed)
        t = time.perf_counter()
        _, I_ref = exact_knn(xb, xq, k)
        LOG.info("nb=%d d=%d: exact ground truth in %.1f s", nb, d, time.perf_counter() - t)
        chosen = choose_factory(nb, d)
        for factory in resolve_candidates(nb, d, candidates):
            LOG.info("nb=%d: building %s", nb, factory)
            t = time.perf_counter()
            index = build_index(xb, factory, seed=seed)
            build_s = time.perf_counter() - t
            nbytes = int(describe(index)["bytes"])
            default = default_search_params(index, nb)
            for params in _sweep(index, default):
                set_search_params(index, **params)
                row = {"nb": nb, "factory": factory, "params": get_search_params(index), "build_s": build_s}
                row |= {"bytes": nbytes, **_measure(index, xq, k, I_ref)}
                row["default"] = factory == chosen and params == default
                rows.append(row)
                LOG.info("%s", row)
                if row["default"]:
                    ok = row["recall"] >= RECALL_TARGET
                    checks.append({"nb": nb, "factory": factory, "recall": row["recall"], "pass": ok})
            del index
        del xb
    return {
        "d": d,
        "nq": nq,
        "k": k,
        "seed": seed,
        "threads": faiss.omp_get_max_threads(),
        "recall_target": RECALL_TARGET,
        "rows": rows,
        "checks": checks,
        "defaults_reach_target": all(c["pass"] for c in checks),
    }


def format_bench_index(result: dict[str, Any]) -> str:
    """Fixed-width table of :func:`bench_index` rows; ``*`` marks the default choice, ``!`` a default below target."""
    k, target = result["k"], result["recall_target"]
    head = (
        f"{'':2}{'nb':>9}  {'factory':<26}{'params':<30}{'build s':>8}{'MiB':>9}{'p50 ms':>10}{'p99 ms':>10}"
        f"{'q/s@64':>10}{f'R@{k}':>7}"
    )
    lines = [
        f"index benchmark: d={result['d']} nq={result['nq']} k={k} threads={result['threads']} "
        f"(* = default choice, ! = default below recall {target})",
        head,
    ]
    for r in result["rows"]:
        mark = ("*" if r["recall"] >= target else "!") if r["default"] else " "
        params = ",".join(f"{key}={v:g}" for key, v in r["params"].items()) or "-"
        lines.append(
            f"{mark:<2}{r['nb']:>9}  {r['factory']:<26}{params:<30}{r['build_s']:>8.2f}{r['bytes'] / 2**20:>9.1f}"
            f"{r['p50_ms']:>10.3f}{r['p99_ms']:>10.3f}{r['qps']:>10.0f}{r['recall']:>7.3f}"
        )
    for c in result["checks"]:
        verdict = "PASS" if c["pass"] else "FAIL"
        lines.append(
            f"{verdict}: default {c['factory']} at nb={c['nb']}: recall@{k} {c['recall']:.3f} (target >= {target})"
        )
    return "\n".join(lines)
