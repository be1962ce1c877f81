"""Evaluation arithmetic: ranks, accuracy and beyond-accuracy metrics, checked by hand and against pytrec_eval.

pytrec_eval (trec_eval's C code) is the independent reference for P@K, R@K, NDCG@K and MRR. trec_eval breaks
score ties by document name, descending; naming relevant documents ``a…`` and the others ``b…`` makes it rank
the non-relevant ones first on a tie, which is our pessimistic rule, so runs with ties are compared too.
"""

from __future__ import annotations

import itertools
import math
import os

import numpy as np
import pandas as pd
import pytest
import pytrec_eval  # the test extra; a missing reference must fail, not skip

from multimodal_rec.evaluation.bundle_eval import semantic_retrieval
from multimodal_rec.evaluation.metrics import (
    beyond_accuracy,
    leave_out_metrics,
    metrics_from_ranks,
    ranked_items,
    ranking_metrics,
    relevance_metrics,
    target_ranks,
)

KS = (1, 5, 10)
# MMREC_SLOW_TESTS=1: many more random rankings against trec_eval (tests/README.md)
TRIALS = 200 if os.environ.get("MMREC_SLOW_TESTS") == "1" else 5


def test_target_ranks_are_one_based_and_pessimistic_on_ties() -> None:
    scores = np.array([[0.9, 0.5, 0.1], [0.2, 0.2, 0.2]])
    assert target_ranks(scores, np.array([0, 1])).tolist() == [1, 3]


def test_ranking_metrics_known_values() -> None:
    m = ranking_metrics(np.array([1, 3, 30]), ks=(10,))
    assert math.isclose(m["recall@10"], 2 / 3)
    assert math.isclose(m["ndcg@10"], (1 + 1 / math.log2(4)) / 3)
    assert math.isclose(m["mrr"], (1 + 1 / 3 + 1 / 30) / 3)


def test_a_nan_score_ranks_last_and_is_never_a_hit() -> None:
    scores = np.array([[np.nan, 0.1, 0.2, 0.3] + [0.0] * 20, [0.5, np.nan, 0.4, np.nan] + [0.0] * 20])
    ranks = target_ranks(scores, np.array([0, 0]))
    assert ranks.tolist() == [24, 1]  # a NaN target is last; NaN neighbours rank below a real score
    m = metrics_from_ranks(ranks, 24)
    assert m["recall@20"] == 0.5 and math.isfinite(m["ndcg@10"]) and math.isclose(m["mrr"], (1 / 24 + 1) / 2)
    m = leave_out_metrics(scores, np.array([0, 0]), np.zeros_like(scores, dtype=bool), np.eye(24), np.zeros(24))
    assert m["recall@10"] == 0.5 and m["ndcg@10"] == 0.5
    rel = np.zeros((1, 24), dtype=bool)
    rel[0, 0] = True
    per_query = relevance_metrics(scores[:1], rel, 5)
    assert per_query["p@5"][0] == 0 and per_query["ndcg@5"][0] == 0 and per_query["rr"][0] == 1 / 24


def test_excluded_items_are_not_candidates_and_an_excluded_target_is_refused() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
    exclude = np.array([[True, False, True, False, False]])
    assert target_ranks(scores, np.array([3]), exclude).tolist() == [2]  # only item 1 is ahead
    with pytest.raises(ValueError, match="excluded"):
        target_ranks(scores, np.array([0]), exclude)


def _trec(scores: np.ndarray, relevant: np.ndarray, ks: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """pytrec_eval's P, recall, ndcg_cut and recip_rank; relevant docs named so that trec_eval puts them last on
    a tie (it orders ties by name, descending)."""
    n, N = scores.shape
    names = [[("a" if relevant[q, j] else "b") + f"{j:05d}" for j in range(N)] for q in range(n)]
    qrel = {f"q{q}": {names[q][j]: int(relevant[q, j]) for j in range(N)} for q in range(n)}
    run = {f"q{q}": {names[q][j]: float(scores[q, j]) for j in range(N)} for q in range(n)}
    measures = {"recip_rank"} | {f"{m}_{k}" for m in ("P", "recall", "ndcg_cut") for k in ks}
    return pytrec_eval.RelevanceEvaluator(qrel, measures).evaluate(run)


def _random_case(seed: int, ties: bool, n: int = 20, N: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, (n, N)).astype(float) if ties else rng.normal(size=(n, N))
    relevant = rng.random((n, N)) < rng.uniform(0.02, 0.3, size=(n, 1))
    relevant[~relevant.any(1), 0] = True  # every query has at least one relevant item
    return scores, relevant


@pytest.mark.parametrize("ties", [False, True])
def test_several_relevant_items_match_trec_eval(ties: bool) -> None:
    for seed in range(TRIALS):
        scores, relevant = _random_case(seed, ties)
        ref = _trec(scores, relevant, KS)
        for k in KS:
            ours = relevance_metrics(scores, relevant, k)
            for q in range(len(scores)):
                r = ref[f"q{q}"]
                assert math.isclose(ours[f"p@{k}"][q], r[f"P_{k}"], abs_tol=1e-12)
                assert math.isclose(ours[f"r@{k}"][q], r[f"recall_{k}"], abs_tol=1e-12)
                assert math.isclose(ours[f"ndcg@{k}"][q], r[f"ndcg_cut_{k}"], abs_tol=1e-9)
                assert math.isclose(ours["rr"][q], r["recip_rank"], abs_tol=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_one_target_per_user_matches_trec_eval(ties: bool) -> None:
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 4, (50, 40)).astype(float) if ties else rng.normal(size=(50, 40))
    targets = rng.integers(0, 40, 50)
    relevant = np.zeros_like(scores, dtype=bool)
    relevant[np.arange(50), targets] = True
    ref = _trec(scores, relevant, (10, 20))
    ours = metrics_from_ranks(target_ranks(scores, targets), 40)
    mean = {m: np.mean([r[m] for r in ref.values()]) for m in next(iter(ref.values()))}
    for k in (10, 20):
        assert math.isclose(ours[f"recall@{k}"], mean[f"recall_{k}"])
        assert math.isclose(ours[f"ndcg@{k}"], mean[f"ndcg_cut_{k}"])
    assert math.isclose(ours["precision@10"], mean["P_10"]) and math.isclose(ours["mrr"], mean["recip_rank"])


def test_ties_count_against_the_relevant_items_by_hand() -> None:
    scores = np.array([[0.5, 0.5, 0.5, 0.5, 0.1]])
    relevant = np.array([[True, False, True, False, False]])
    m = relevance_metrics(scores, relevant, 3)
    # ranked: 1, 3 (non-relevant ties first), then 0, 2, then 4 -> relevant at positions 3 and 4
    assert m["p@3"][0] == 1 / 3 and m["r@3"][0] == 0.5 and m["hit_rate@3"][0] == 0.5 and m["rr"][0] == 1 / 3
    assert math.isclose(m["ndcg@3"][0], (1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    assert math.isclose(m["f1@3"][0], 2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))


def test_f1_and_auc_from_their_definitions() -> None:
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(30, 25))
    targets = rng.integers(0, 25, 30)
    exclude = rng.random((30, 25)) < 0.3
    exclude[np.arange(30), targets] = False
    ranks = target_ranks(scores, targets, exclude)
    m = metrics_from_ranks(ranks, 25 - exclude.sum(1))
    auc, f1 = [], []
    for u in range(30):
        cand = np.flatnonzero(~exclude[u])
        others = cand[cand != targets[u]]
        auc.append(np.mean(scores[u, targets[u]] > scores[u, others]))  # share of pairs ordered right
        p, r = (ranks[u] <= 10) / 10, float(ranks[u] <= 10)
        f1.append(2 * p * r / (p + r) if p + r else 0.0)
    assert math.isclose(m["auc"], np.mean(auc)) and math.isclose(m["f1@10"], np.mean(f1))
    assert math.isclose(m["precision@10"], np.mean(ranks <= 10) / 10)


def test_ranked_items_skip_excluded_put_nan_last_and_break_ties_by_index() -> None:
    scores = np.array([[0.3, np.nan, 0.9, 0.3, 0.8, 0.1]])
    exclude = np.array([[False, False, False, False, True, False]])
    assert ranked_items(scores, 6, exclude)[0, :5].tolist() == [2, 0, 3, 5, 1]


def test_beyond_accuracy_by_hand() -> None:
    vecs = np.array([[1, 0], [0, 1], [1, 1], [-1, 0]], dtype=float)
    counts = np.array([6, 2, 0, 0])
    top = np.array([[0, 1], [0, 2]])
    m = beyond_accuracy(top, vecs, counts)
    assert m["coverage@2"] == 3 / 4
    assert math.isclose(m["diversity@2"], ((1 - 0) + (1 - 1 / math.sqrt(2))) / 2)
    p = (counts + 1) / (8 + 4)  # add-one smoothed training share
    assert math.isclose(m["novelty@2"], np.mean([-math.log2(p[i]) for i in top.ravel()]))


def test_diversity_is_the_mean_pairwise_cosine_distance() -> None:
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(30, 8))
    top = np.stack([rng.choice(30, 5, replace=False) for _ in range(7)])
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    pairs = [np.mean([1 - unit[a] @ unit[b] for a, b in itertools.combinations(t, 2)]) for t in top]
    assert math.isclose(beyond_accuracy(top, vecs, np.zeros(30))["diversity@5"], np.mean(pairs))


class _StubRec:
    """Two attributes' worth of catalog with hand-placed embeddings."""

    def __init__(self) -> None:
        self.catalog = pd.DataFrame(
            {"color": ["red", "red", "blue", "red"], "shape": ["circle"] * 4, "motion": ["left"] * 4}
        )
        self.embeddings = np.array([[1, 0], [0.9, 0.1], [0.95, 0.05], [0, 1]], dtype=np.float32)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return np.array([[1, 0]] * len(texts), dtype=np.float32)


def test_semantic_retrieval_reports_standard_precision_and_recall() -> None:
    rec = _StubRec()
    q = [{"query": "a red circle moving left", "color": "red", "shape": "circle", "motion": "left"}]
    # ranking: 0 (red), 2 (blue), 1 (red), 3 (red); three relevant videos
    m = semantic_retrieval(rec, q, np.arange(4))
    assert m["queries"] == 1 and m["relevant"] == 3
    assert m["p@5"] == 3 / 5 and m["r@5"] == 1.0 and m["hit_rate@5"] == 1.0  # hit rate: 3 of min(5, 3)
    m = semantic_retrieval(rec, q, np.arange(4), k=2)
    assert m["p@2"] == 0.5 and m["r@2"] == 1 / 3 and m["hit_rate@2"] == 0.5 and m["mrr"] == 1.0
    assert math.isclose(m["ndcg@2"], 1 / (1 + 1 / math.log2(3)))
    none = [{"query": "x", "color": "green", "shape": "circle", "motion": "left"}]
    assert semantic_retrieval(rec, none, np.arange(4)) == {"queries": 0}
