"""Known-item search: queries that name a video's title, and MRR@10 of the titled video per kind of query.

Per video (or a seeded sample of them) four queries: the exact title, the title lowercased, the title with one
typo (one letter of one name word substituted), and the name alone (``"Tavo Rimelu"`` of ``"Tavo Rimelu: Red
circle moving left"``). A query's reciprocal rank is ``1 / position`` of its video among the top 10 hits of
``Recommender.search(query, k=10, mode=mode)``, 0 when it is not among them (MRR@10).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np
import pandas as pd

from multimodal_rec.evaluation.metrics import reciprocal_rank

LOG = logging.getLogger(__name__)
KINDS = ("exact", "lowercase", "typo", "partial")
K = 10
_WORD_RE = re.compile(r"[A-Za-z]+")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def title_name(title: str) -> str:
    """The name part of a title: before ``": "``; a title without one: its first half of words (at least one)."""
    name, sep, _ = title.partition(": ")
    if sep:
        return name.strip()
    words = title.split()
    return " ".join(words[: max(1, len(words) // 2)])


def with_typo(word: str, rng: np.random.Generator, avoid: set[str]) -> str:
    """``word`` with one letter (not the first) substituted by another, case kept; the result, lowercased, is not
    in ``avoid`` (so a typo never turns into another title's word). Words under three letters are returned as is."""
    if len(word) < 3:
        return word
    for _ in range(100):
        i = int(rng.integers(1, len(word)))
        c = _LETTERS[int(rng.integers(len(_LETTERS)))]
        if c == word[i].lower():
            continue
        out = word[:i] + (c.upper() if word[i].isupper() else c) + word[i + 1 :]
        if out.lower() not in avoid:
            return out
    return word


def known_item_queries(catalog: pd.DataFrame, sample: int | None = 200, seed: int = 0) -> list[dict[str, str]]:
    """``{"kind", "query", "video_id"}`` for each kind of :data:`KINDS`, per titled video of ``catalog`` (a seeded
    sample of ``sample`` videos when there are more; None: all)."""
    if "title" not in catalog.columns:
        return []
    titled = catalog[catalog["title"].fillna("").astype(str).str.strip() != ""]
    rng = np.random.default_rng(seed)
    if sample is not None and len(titled) > sample:
        titled = titled.iloc[np.sort(rng.choice(len(titled), size=sample, replace=False))]
    avoid = {w.lower() for t in catalog["title"].dropna().astype(str) for w in _WORD_RE.findall(t)}
    out: list[dict[str, str]] = []
    for vid, title in zip(titled["video_id"].astype(str), titled["title"].astype(str).str.strip(), strict=True):
        name = title_name(title)
        words = _WORD_RE.findall(name) or _WORD_RE.findall(title)
        typo = title
        if words:
            w = words[int(rng.integers(len(words)))]
            typo = re.sub(rf"\b{re.escape(w)}\b", with_typo(w, rng, avoid), title, count=1)
        queries = {"exact": title, "lowercase": title.lower(), "typo": typo, "partial": name}
        out += [{"kind": kind, "query": queries[kind], "video_id": vid} for kind in KINDS]
    return out


def mrr_by_kind(queries: list[dict[str, str]], ranked: list[list[str]], k: int = K) -> dict[str, Any]:
    """MRR@k per kind of query and over all of them; ``ranked[i]``: the video ids query ``i`` returned, best first."""
    rr = np.array([reciprocal_rank(r, q["video_id"], k) for q, r in zip(queries, ranked, strict=True)])
    kinds = np.array([q["kind"] for q in queries])
    out: dict[str, Any] = {"queries": len(queries)}
    for kind in KINDS:
        if (kinds == kind).any():
            out[kind] = float(rr[kinds == kind].mean())
    out["overall"] = float(rr.mean()) if len(rr) else float("nan")
    return out


def known_item_mrr(
    rec: Any, catalog: pd.DataFrame, mode: str | None, sample: int | None = 200, seed: int = 0, k: int = K
) -> dict[str, Any]:
    """MRR@k of title queries against ``rec.search(query, k, mode=mode)``, per kind and overall (videos of
    ``catalog`` that ``rec`` does not serve are left out)."""
    served = catalog[catalog["video_id"].astype(str).isin(set(rec.row_of))]
    queries = known_item_queries(served, sample, seed)
    if not queries:
        return {"queries": 0}
    ranked: list[list[str]] = []
    for i in range(0, len(queries), 256):
        batch = [q["query"] for q in queries[i : i + 256]]
        ranked += [[h.video_id for h in hits] for hits in rec.search_batch(batch, k=k, mode=mode)]
    return mrr_by_kind(queries, ranked, k)
