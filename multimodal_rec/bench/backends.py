"""Query-encoding variants side by side, in one run (not tests): ``mmrec bench search|serve --text-backend ...``.

Every run includes ``before``: the torch trunk, one query encoding at a time under one lock, no stored item
features, no cache (how serving worked before issue 18); each variant named on the command line (``torch``,
``onnx``, ``onnx-int8``) runs with stored item features and micro-batching on and the query cache off (the queries
repeat when they outnumber the titles, and a cache would time the cache). Search queries are catalog titles with
`` clip`` appended (free text, never a stored item text); catalog-item histories are ``HISTORY_LEN`` titles.

``bench_variants_search`` times ``Recommender.search`` / ``recommend`` in-process, the variants alternating query
by query, so machine noise hits all alike; ``bench_variants_serve`` runs ``bench_serve`` once per variant.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from multimodal_rec.bench.serve import HISTORY_LEN, HTTP_GOAL, WARMUP, bench_serve, sample_texts
from multimodal_rec.bench.timing import latency_ms
from multimodal_rec.errors import UserError

LOG = logging.getLogger(__name__)
BASELINE = "before"
VARIANTS = ("torch", "onnx", "onnx-int8")
BASELINE_SET = {"text_backend": "torch", "known_texts": False, "query_cache": 0, "concurrent": False}


def variant_settings(name: str) -> dict[str, Any]:
    """ServeConfig fields of a variant: ``before`` or a text backend (stored features and batching on, no cache)."""
    if name == BASELINE:
        return dict(BASELINE_SET)
    if name not in VARIANTS:
        raise UserError(f"unknown text backend {name!r} (use {', '.join(VARIANTS)})")
    return {"text_backend": name, "query_cache": 0}


def parse_variants(spec: str | Sequence[str]) -> list[str]:
    """``"torch,onnx"`` -> ``["before", "torch", "onnx"]`` (the baseline first, each name once)."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    out = [BASELINE, *dict.fromkeys(n.strip() for n in names if n.strip() and n.strip() != BASELINE)]
    for n in out:
        variant_settings(n)
    return out


def free_text(titles: Sequence[str]) -> list[str]:
    """Search queries that are not item texts: each title with `` clip`` appended."""
    return [f"{t} clip" for t in titles]


def _timed(fn: Any, n: int, names: list[str]) -> dict[str, list[float]]:
    """``fn(name, i)`` for every variant and i < n, the variants' order rotating per i, after a warm-up."""
    import time

    for i in range(min(WARMUP, n)):
        for name in names:
            fn(name, i)
    out: dict[str, list[float]] = {name: [] for name in names}
    for i in range(n):
        for j in range(len(names)):
            name = names[(i + j) % len(names)]
            t = time.perf_counter()
            fn(name, i)
            out[name].append(time.perf_counter() - t)
    return out


def index_recall(rec: Any, xq: np.ndarray, k: int, chunk: int = 65_536) -> float:
    """recall@k of ``rec``'s index against an exact scan of what it holds, for index-ready queries ``xq``."""
    xb = rec.xb
    best_d = np.full((len(xq), 0), -np.inf, np.float32)
    best_i = np.zeros((len(xq), 0), np.int64)
    for s in range(0, len(xb), chunk):  # exact top k, a chunk of the catalog at a time (bounded memory at 1M)
        d = xq @ np.asarray(xb[s : s + chunk]).T
        top = np.argpartition(-d, min(k, d.shape[1]) - 1, axis=1)[:, :k]
        best_d = np.hstack([best_d, np.take_along_axis(d, top, 1)])
        best_i = np.hstack([best_i, top + s])
        keep = np.argsort(-best_d, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(best_d, keep, 1), np.take_along_axis(best_i, keep, 1)
    _, found = rec.index.search(np.ascontiguousarray(xq, np.float32), k)
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, best_i, strict=True)]))


def bench_variants_search(
    bundle: str | Path,
    variants: Sequence[str],
    queries: int = 200,
    k: int = 10,
    seed: int = 0,
    mode: str | None = None,
) -> dict[str, Any]:
    """p50 / p99 of ``search`` (free text), ``recommend`` over free-text histories and over catalog-item histories,
    per variant, in-process on the CPU; ratios to ``before``; cosine of each variant's query vectors to before's and
    the overlap of their top-``k`` videos (vector search); the index's recall@k against an exact scan. ``mode``:
    the search mode (None: the bundle's default, hybrid when the catalog has text)."""
    import torch

    from multimodal_rec.serving.recommender import Recommender
    from multimodal_rec.serving.text_backends import ServeConfig

    names = parse_variants(variants)
    recs = {n: Recommender.load(bundle, serve=ServeConfig(**variant_settings(n))) for n in names}
    base = recs[BASELINE]
    titles = sample_texts(base.catalog, queries + HISTORY_LEN, seed)
    texts = free_text(titles[:queries])
    items = [titles[i : i + HISTORY_LEN] for i in range(queries)]
    free = [free_text(h) for h in items]
    calls = {
        "search": lambda n, i: recs[n].search(texts[i], k, mode=mode),
        "recommend_free_text": lambda n, i: recs[n].recommend(free[i], k),
        "recommend_items": lambda n, i: recs[n].recommend(items[i], k),
    }
    out: dict[str, Any] = {"bundle": str(bundle), "videos": len(base), "queries": queries, "k": k}
    out |= {"index": base.manifest.get("index"), "search_mode": mode or base.search_mode}
    out["torch_threads"] = torch.get_num_threads()
    out["variants"] = {n: {} for n in names}
    for call, fn in calls.items():
        times = _timed(fn, queries, names)
        ref = float(np.median(times[BASELINE]))
        for n in names:
            out["variants"][n][call] = {**latency_ms(times[n]), "ratio": round(float(np.median(times[n])) / ref, 3)}
    out["index_recall_at_k"] = round(index_recall(base, base.text_queries(texts), k), 4)
    xq0 = base.encode_queries(texts)
    top0 = [{h.video_id for h in hs} for hs in base.search_batch(texts, k, mode="vector")]
    for n in names:
        xq = recs[n].encode_queries(texts)
        cos = (xq * xq0).sum(1)
        top = [{h.video_id for h in hs} for hs in recs[n].search_batch(texts, k, mode="vector")]
        overlap = np.mean([len(a & b) / max(1, len(b)) for a, b in zip(top, top0, strict=True)])
        out["variants"][n]["agreement"] = {
            "cosine_min": round(float(cos.min()), 4),
            "cosine_mean": round(float(cos.mean()), 4),
            "top_k_overlap": round(float(overlap), 3),
        }
        out["variants"][n]["features"] = recs[n].query_features.stats()
    return out


def format_variants_search(r: dict[str, Any]) -> str:
    """Human-readable table of :func:`bench_variants_search`."""
    head = f"  {'variant':<11}{'call':<22}{'p50 ms':>9}{'p99 ms':>9}{'x before':>10}"
    lines = [
        f"bundle {r['bundle']}: {r['videos']} videos, index {r.get('index')}, {r['queries']} queries, k={r['k']}, "
        f"search mode {r.get('search_mode')}",
        head,
    ]
    for n, v in r["variants"].items():
        for call in ("search", "recommend_free_text", "recommend_items"):
            m = v[call]
            lines.append(f"  {n:<11}{call:<22}{m['p50_ms']:>9.3f}{m['p99_ms']:>9.3f}{m['ratio']:>10.3f}")
    lines.append(f"  agreement with before (search query vectors; vector-mode top {r['k']}):")
    for n, v in r["variants"].items():
        a = v["agreement"]
        lines.append(
            f"  {n:<11}cosine min {a['cosine_min']:.4f} mean {a['cosine_mean']:.4f}, "
            f"top-{r['k']} overlap {a['top_k_overlap']:.3f}"
        )
    recall = r["index_recall_at_k"]
    lines.append(f"  index recall@{r['k']} against an exact scan (before's search query vectors): {recall:.3f}")
    return "\n".join(lines)


def bench_variants_serve(
    bundle: str | Path,
    variants: Sequence[str],
    requests: int = 600,
    concurrency: int = 16,
    k: int = 10,
    seed: int = 0,
    *,
    workers: int = 1,
    inprocess: bool = True,
) -> dict[str, Any]:
    """:func:`~multimodal_rec.bench.serve.bench_serve` once per variant (one server each, one after the other, each
    followed by its in-process run unless ``inprocess`` is False); throughput ratios to ``before``."""
    names = parse_variants(variants)
    runs = {
        n: bench_serve(
            bundle, requests, concurrency, k, seed, settings=variant_settings(n), workers=workers, inprocess=inprocess
        )
        for n in names
    }
    ref = runs[BASELINE]["throughput_rps"]
    for r in runs.values():
        r["throughput_ratio"] = round(r["throughput_rps"] / ref, 3) if ref else None
    out = {"bundle": str(bundle), "requests": requests, "concurrency": concurrency, "workers": workers}
    return {**out, "variants": runs}


def format_variants_serve(r: dict[str, Any]) -> str:
    """Human-readable table of :func:`bench_variants_serve`."""
    lines = [
        f"bundle {r['bundle']}: {r['requests']} requests per variant at concurrency {r['concurrency']}, "
        f"{r.get('workers', 1)} server workers",
        f"  {'variant':<11}{'req/s':>8}{'x before':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'/search p50':>13}{'/recommend p50':>16}{'in-proc req/s':>15}{'HTTP/in-proc':>14}{'PSS MiB':>9}",
    ]
    nan = float("nan")
    for n, m in r["variants"].items():
        ep = m["endpoints"]
        s, rc = ep.get("/search", {}).get("p50_ms", nan), ep.get("/recommend", {}).get("p50_ms", nan)
        pss = (m.get("memory") or {}).get("total_pss_mib", nan)
        lines.append(
            f"  {n:<11}{m['throughput_rps']:>8.1f}{m['throughput_ratio']:>10.3f}{m['p50_ms']:>9.1f}{m['p99_ms']:>9.1f}"
            f"{m['errors']:>8}{s:>13.1f}{rc:>16.1f}{m.get('inprocess_best_rps', nan):>15.1f}"
            f"{m.get('http_vs_inprocess', nan):>14.3f}{pss:>9.1f}"
        )
    lines.append(f"  (in-process: the best of each variant's configurations, see --json; HTTP goal >= {HTTP_GOAL})")
    return "\n".join(lines)
