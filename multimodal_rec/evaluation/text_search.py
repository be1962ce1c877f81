"""The search modes compared on the short-clip world: semantic P@5 and known-item MRR@10 for vector, lexical and
hybrid search, each through ``Recommender.search(..., mode=...)`` over the whole served catalog.

Semantic queries (vocabulary, paraphrase) name a colour, shape and motion; every video showing them is relevant
(``P@5 = relevant among the 5 hits / 5``). The synthetic titles ("<Name>: <Color> <shape> <motion phrase>") state
the clip in the captions' words, so lexical search can read vocabulary queries off them; paraphrases share no
word with any title, so lexical search has nothing to match there and hybrid must not lose to vector on them.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import numpy as np
import pandas as pd

from multimodal_rec.evaluation.known_item import known_item_mrr
from multimodal_rec.evaluation.metrics import precision_at_k, relevance_metrics

LOG = logging.getLogger(__name__)
MODES = ("vector", "lexical", "hybrid")
ATTRS = ("color", "shape", "motion")


def supported_modes(rec: Any) -> tuple[str, ...]:
    """The modes to compare: all three when ``rec.search`` takes ``mode`` and the catalog has titles, else none."""
    if "mode" not in inspect.signature(rec.search).parameters or "title" not in rec.catalog.columns:
        return ()
    return MODES


def relevant_ids(catalog: pd.DataFrame, query: dict[str, str]) -> set[str]:
    """Ids of the videos whose colour, shape and motion are the query's."""
    hit = np.logical_and.reduce([catalog[a].astype(str) == query[a] for a in ATTRS])
    return set(catalog["video_id"].astype(str)[hit])


def attribute_relevance(catalog: pd.DataFrame, queries: list[dict]) -> np.ndarray:
    """``[nq, n]`` bool: whether catalog row ``j`` shows query ``i``'s colour, shape and motion."""
    attrs = catalog[list(ATTRS)].astype(str).to_numpy()  # [n, 3]
    want = np.array([[q[a] for a in ATTRS] for q in queries], dtype=object).astype(str)  # [nq, 3]
    return (attrs[None, :, :] == want[:, None, :]).all(2)


def semantic_metrics(scores: np.ndarray, relevant: np.ndarray, k: int = 5) -> dict[str, float]:
    """Mean P@k, R@k, hit rate@k, NDCG@k and MRR of ``scores [nq, n]`` against ``relevant [nq, n]`` (every row
    with a relevant item; full ranking, ties against the relevant items), with the query count and mean relevant."""
    per_query = relevance_metrics(scores, relevant, k)
    out = {"queries": len(relevant), "relevant": float(relevant.sum(1).mean())}
    return out | {("mrr" if m == "rr" else m): float(v.mean()) for m, v in per_query.items()}


def semantic_p_at_k(rec: Any, catalog: pd.DataFrame, queries: list[dict], mode: str, k: int = 5) -> dict[str, Any]:
    """Mean P@k of ``rec.search_batch(queries, k, mode=mode)`` over the queries that have a relevant video."""
    rel = [relevant_ids(catalog, q) for q in queries]
    keep = [i for i, r in enumerate(rel) if r]
    if not keep:
        return {"queries": 0}
    hits = rec.search_batch([queries[i]["query"] for i in keep], k=k, mode=mode)
    p = [precision_at_k([h.video_id for h in hs], rel[i], k) for hs, i in zip(hits, keep, strict=True)]
    return {"queries": len(keep), f"p@{k}": float(np.mean(p))}


def compare_modes(rec: Any, sample: int | None = 200, seed: int = 0) -> dict[str, Any]:
    """Per mode: semantic P@5 (vocabulary, paraphrase) and known-item MRR@10 (``{}`` when modes are not served)."""
    modes = supported_modes(rec)
    if not modes:
        return {}
    from multimodal_rec.data.synth import paraphrase_queries, vocab_queries

    catalog = rec.catalog[rec.catalog["video_id"].astype(str).isin(set(rec.row_of))]
    out: dict[str, Any] = {"semantic": {}, "known_item": {}}
    for mode in modes:
        if all(a in catalog.columns for a in ATTRS):
            out["semantic"][mode] = {
                "vocabulary": semantic_p_at_k(rec, catalog, vocab_queries(), mode),
                "paraphrase": semantic_p_at_k(rec, catalog, paraphrase_queries(), mode),
            }
        out["known_item"][mode] = known_item_mrr(rec, catalog, mode, sample=sample, seed=seed)
    return out


def format_modes(res: dict[str, Any]) -> list[str]:
    """The mode tables as text lines."""
    lines: list[str] = []
    sem, ki = res.get("semantic") or {}, res.get("known_item") or {}
    if sem:
        lines.append("search modes, semantic P@5 over the whole catalog (Recommender.search):")
        lines.append(f"  {'mode':<10}{'vocabulary':>12}{'paraphrase':>12}")
        for mode, r in sem.items():
            v, p = r["vocabulary"].get("p@5", float("nan")), r["paraphrase"].get("p@5", float("nan"))
            lines.append(f"  {mode:<10}{v:>12.3f}{p:>12.3f}")
    if ki:
        n = next(iter(ki.values())).get("queries", 0)
        lines.append(f"known-item search ({n} title queries), MRR@10:")
        lines.append(f"  {'mode':<10}{'exact':>10}{'lowercase':>11}{'typo':>8}{'partial':>9}{'overall':>9}")
        for mode, r in ki.items():
            if r.get("queries"):
                cells = "".join(f"{r.get(c, float('nan')):>{w}.3f}" for c, w in zip(
                    ("exact", "lowercase", "typo", "partial", "overall"), (10, 11, 8, 9, 9), strict=True
                ))  # fmt: skip
                lines.append(f"  {mode:<10}{cells}")
    return lines
