"""Full-ranking metrics for one relevant item per query (numpy only, importable without torch or FAISS)."""

from __future__ import annotations

import numpy as np


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of ``targets[i]`` in row ``i`` of ``scores [n, N]`` (ties counted pessimistically)."""
    t = scores[np.arange(len(targets)), targets][:, None]
    return 1 + (scores > t).sum(1) + ((scores == t).sum(1) - 1)


def ranking_metrics(ranks: np.ndarray, ks: tuple[int, ...] = (10, 20)) -> dict[str, float]:
    """Recall@K, NDCG@K (one relevant item) and MRR from 1-based ranks."""
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks <= k
        out[f"recall@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 1), 0.0).mean())
    out["mrr"] = float((1.0 / ranks).mean())
    return out
