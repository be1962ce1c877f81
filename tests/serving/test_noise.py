"""Telling a match from noise: a query the English-only text model cannot read is flagged, ``min_score`` drops weak
hits, and ``info()["noise_score"]`` says what junk queries score on the catalog."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from multimodal_rec.errors import UserError
from multimodal_rec.serving.queries import NOISE_PERCENTILE, NOISE_QUERIES
from multimodal_rec.serving.recommender import Recommender

ENGLISH = "a red circle moving left"


@pytest.fixture(scope="module")
def rec(bundle: Path, one_faiss_thread: None) -> Recommender:
    return Recommender.load(bundle)


@pytest.mark.parametrize("junk", ["🎬🐰", "🔥 🔥", "🐰"])
def test_a_query_of_unknown_tokens_only_is_flagged(rec: Recommender, junk: str) -> None:
    info = rec.query_info(junk)
    assert info["tokens"] >= 1 and info["unknown_tokens"] == info["tokens"]
    assert info["in_vocabulary"] is False


def test_a_vocabulary_query_is_not_flagged(rec: Recommender) -> None:
    assert rec.query_info(ENGLISH) == {"unknown_tokens": 0, "tokens": 5, "in_vocabulary": True}
    mixed = rec.query_info("red 🎬")  # one known word is enough to read
    assert mixed["in_vocabulary"] is True and mixed["unknown_tokens"] == 1
    with pytest.raises(UserError):
        rec.query_info("   ")


def test_min_score_drops_the_hits_below_it(rec: Recommender) -> None:
    hits = rec.search(ENGLISH, k=10, mode="vector")  # min_score is a cosine (hybrid: test_hybrid.py)
    cut = hits[3].score
    kept = rec.search(ENGLISH, k=10, min_score=cut, mode="vector")
    assert kept and all(h.score >= cut for h in kept)
    assert [h.video_id for h in kept] == [h.video_id for h in hits if h.score >= cut]
    assert len(kept) < len(hits)  # the weaker ones are gone
    assert rec.search(ENGLISH, k=10, min_score=2.0, mode="vector") == []  # cosine never reaches 2
    assert rec.search(ENGLISH, k=10, min_score=-2.0, mode="vector") == hits  # nothing below -2: all kept
    batch = rec.search_batch([ENGLISH, "🎬🐰"], k=5, min_score=cut, mode="vector")
    assert all(h.score >= cut for row in batch for h in row)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "0.5", True])
def test_min_score_must_be_a_finite_number(rec: Recommender, bad: object) -> None:
    with pytest.raises(UserError, match="min_score"):
        rec.search(ENGLISH, min_score=bad)  # type: ignore[arg-type]


def test_noise_score_is_the_junk_queries_best_score_percentile(rec: Recommender) -> None:
    info = rec.info()
    best = [hits[0].score for hits in rec.search_batch(list(NOISE_QUERIES), k=1, mode="vector")]
    assert info["noise_score"] == pytest.approx(np.percentile(best, NOISE_PERCENTILE), abs=1e-4)
    assert -1.0 <= info["noise_score"] <= 1.0
    assert rec.info()["noise_score"] == info["noise_score"]  # computed once, same after
    assert "noise_score" not in repr(rec)  # repr stays cheap: no model call


def test_http_search_warns_and_filters(rec: Recommender) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from multimodal_rec.serving.http import create_app

    with TestClient(create_app(rec)) as c:
        junk = c.post("/search", json={"query": "🎬🐰", "k": 3}).json()
        assert len(junk["hits"]) == 3 and len(junk["warnings"]) == 1 and "English" in junk["warnings"][0]
        ok = c.post("/search", json={"query": ENGLISH, "k": 3}).json()
        assert ok["warnings"] == []
        assert c.post("/search", json={"query": ENGLISH, "k": 3, "min_score": 2, "mode": "vector"}).json()["hits"] == []
        assert c.post("/search", json={"query": ENGLISH, "min_score": "high"}).status_code == 422
