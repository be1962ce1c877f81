"""Hybrid search checked against the way it was built before bare candidates (issue 18): every candidate of both
rankings a full hit, fused, cut to ``k``. Shared by the hybrid and the moments tests."""

from __future__ import annotations

from typing import Any

from multimodal_rec import Recommender


def hybrid_in_full(rec: Recommender, texts: list[str], k: int, **kw: Any) -> list[list[dict[str, Any]]]:
    """Hybrid search as it was built before bare candidates: every candidate a full hit (metadata, moment)."""
    from multimodal_rec.serving.filters import filter_mask
    from multimodal_rec.serving.fusion import Rankers, ranked

    f = kw.get("filters")
    rank = Rankers(rec._state, rec._lexical, rec.text_queries, texts, f, filter_mask(rec.catalog, f))
    return [[h.to_dict() for h in hs] for hs in ranked("hybrid", k, kw.get("min_score"), rank.vector, rank.lexical)]


def assert_hybrid_as_in_full(rec: Recommender, texts: list[str]) -> None:
    """Hybrid hits completed from bare candidates equal hits built in full: ids, scores, ranks, metadata, moments
    (a vector-scored hit's best moment, a lexical-only hit's whole video)."""
    lexical_only = 0
    for kw in ({}, {"filters": {"color": "red"}}, {"min_score": 0.3}, {"min_score": 2.0}):
        got = [[h.to_dict() for h in hs] for hs in rec.search_batch(texts, 7, mode="hybrid", **kw)]
        assert got == hybrid_in_full(rec, texts, 7, **kw), kw
        assert all(h["moment"] is not None and "title" in h for hs in got for h in hs)
        lexical_only += sum(h["scores"]["vector"] is None for hs in got for h in hs)
    assert lexical_only, "no lexical-only hit was checked"  # min_score 2.0 leaves only word matches
