"""Evaluation arithmetic on hand-made numbers: ranks, Recall/NDCG/MRR, semantic precision."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from multimodal_rec.evaluation.bundle_eval import ranking_metrics, semantic_precision, target_ranks


def test_target_ranks_are_one_based_and_pessimistic_on_ties() -> None:
    scores = np.array([[0.9, 0.5, 0.1], [0.2, 0.2, 0.2]])
    assert target_ranks(scores, np.array([0, 1])).tolist() == [1, 3]


def test_ranking_metrics_known_values() -> None:
    m = ranking_metrics(np.array([1, 3, 30]), ks=(10,))
    assert math.isclose(m["recall@10"], 2 / 3)
    assert math.isclose(m["ndcg@10"], (1 + 1 / math.log2(4)) / 3)
    assert math.isclose(m["mrr"], (1 + 1 / 3 + 1 / 30) / 3)


class _StubRec:
    """Two attributes' worth of catalog with hand-placed embeddings."""

    def __init__(self) -> None:
        self.catalog = pd.DataFrame(
            {"color": ["red", "red", "blue", "red"], "shape": ["circle"] * 4, "motion": ["left"] * 4}
        )
        self.embeddings = np.array([[1, 0], [0.9, 0.1], [0.95, 0.05], [0, 1]], dtype=np.float32)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return np.array([[1, 0]] * len(texts), dtype=np.float32)


def test_semantic_precision_caps_the_denominator_at_the_matching_count() -> None:
    rec = _StubRec()
    q = [{"query": "a red circle moving left", "color": "red", "shape": "circle", "motion": "left"}]
    # top-5 of 4 videos holds all 3 red ones: precision 3 / min(5, 3) = 1
    assert semantic_precision(rec, q, np.arange(4))["p@5"] == 1.0
    # top-2: video 0 (red) and 2 (blue): 1 of min(2, 3)
    assert semantic_precision(rec, q, np.arange(4), k=2)["p@2"] == 0.5
