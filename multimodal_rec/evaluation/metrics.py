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


CURVE_KS = (1, 2, 5, 10, 20, 30, 50, 75, 100)  # where Recall@K curves are sampled


def metrics_from_ranks(ranks: np.ndarray, n_items: int) -> dict[str, float]:
    """Recall@10/20/50, NDCG@10/20, MRR, precision@10 (one relevant item), median rank and its percentile."""
    out: dict[str, float] = {"users": float(len(ranks))}
    for k in (10, 20, 50):
        out[f"recall@{k}"] = float((ranks <= k).mean())
    out |= {k: v for k, v in ranking_metrics(ranks, (10, 20)).items() if k.startswith("ndcg") or k == "mrr"}
    out["precision@10"] = out["recall@10"] / 10
    out["median_rank"] = float(np.median(ranks))
    out["median_percentile"] = float(np.median((ranks - 1) / max(1, n_items - 1)))
    return out


def recall_curve(ranks: np.ndarray, ks: tuple[int, ...] = CURVE_KS) -> dict[str, float]:
    """Recall@K for each K in ``ks`` (keys are the Ks as strings)."""
    return {str(k): float((ranks <= k).mean()) for k in ks}
