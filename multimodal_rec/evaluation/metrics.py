"""Full-ranking metrics (numpy only, importable without torch or FAISS).

Conventions, shared by every evaluation in the project:

- **Ties count against the relevant item** (pessimistic): an item scored equal to a relevant one ranks above it,
  so a constant scorer gets the worst rank, never a lucky one.
- **NaN ranks last**: a NaN score is treated as below every real score (``-inf``), ties against the relevant
  item as above; it can never make an item a hit, and no rank is ever 0.
- **Excluded items are not candidates** (``exclude``: the items a user already saw): they are neither ranked
  nor counted. A relevant item must not itself be excluded; callers drop such queries first.

Accuracy, for queries with ``R`` relevant items and ``hits`` of them in the top ``K`` (binary relevance, the
definitions of trec_eval, checked against ``pytrec_eval`` in the tests):

- ``P@K = hits / K``, ``R@K = hits / R``, ``F1@K = 2·P·R / (P + R)`` (0 when there is no hit);
- ``hit_rate@K = hits / min(K, R)`` (1.0 when every slot that could hold a relevant item does);
- ``NDCG@K = DCG@K / IDCG@K`` with ``DCG@K = sum over relevant items at positions i <= K of 1 / log2(i + 1)``
  and ``IDCG@K`` the same for the ideal ranking (all ``R`` relevant items first, ``min(K, R)`` of them);
- ``MRR = 1 / (position of the first relevant item)`` over the full ranking;
- ``AUC`` (one relevant item among ``C`` candidates at rank ``r``) ``= (C - r) / (C - 1)``: the share of
  non-relevant candidates ranked below it (Rendle et al.'s per-user AUC, ties as losses), averaged over users.

Beyond accuracy, over each user's top-``K`` list (the seen items excluded, like the accuracy metrics; when a
user has fewer than ``K`` candidates, in a tiny catalog, every list is cut to the fewest candidates):

- ``coverage@K``: distinct items in any user's top-K / catalog size;
- ``diversity@K`` (intra-list): mean over users of the mean pairwise ``1 - cos(x_i, x_j)`` among the ``K``
  items, ``x`` the item embeddings given (the same embeddings for every method);
- ``novelty@K``: mean over users and list items of ``-log2 p_i`` with ``p_i = (c_i + 1) / (sum_j c_j + N)``,
  ``c_i`` item i's training interactions and ``N`` the catalog size (add-one, so never-seen items are finite).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

CURVE_KS = (1, 2, 5, 10, 20, 30, 50, 75, 100)  # where Recall@K curves are sampled
BEYOND_K = 10  # the list length of the beyond-accuracy figures


def _finite(scores: np.ndarray) -> np.ndarray:
    """Scores as float64 with NaN replaced by ``-inf`` (NaN ranks last)."""
    s = np.asarray(scores, dtype=np.float64)
    return np.where(np.isnan(s), -np.inf, s)


def target_ranks(scores: np.ndarray, targets: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """1-based rank of ``targets[i]`` among the candidates of row ``i`` of ``scores [n, N]``.

    Ties count against the target, NaN ranks last; ``exclude [n, N]`` (bool) removes items from the ranking.
    """
    s = _finite(scores)
    rows = np.arange(len(targets))
    t = s[rows, targets][:, None]
    ahead = s >= t  # the target itself included, so the rank is 1-based
    if exclude is not None:
        if exclude[rows, targets].any():
            raise ValueError("a target is among the excluded items: drop those queries first")
        ahead &= ~exclude
    return ahead.sum(1)


def ranking_metrics(ranks: np.ndarray, ks: tuple[int, ...] = (10, 20)) -> dict[str, float]:
    """Recall@K, NDCG@K and MRR for one relevant item per query, from its 1-based ranks."""
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks <= k
        out[f"recall@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 1), 0.0).mean())
    out["mrr"] = float((1.0 / ranks).mean())
    return out


def metrics_from_ranks(ranks: np.ndarray, n_candidates: int | np.ndarray) -> dict[str, float]:
    """Leave-out metrics from the target's 1-based ranks (one relevant item per user).

    Recall@10/20/50, NDCG@10/20, MRR, P@10, F1@10, AUC, the median rank and its median percentile among the
    ``n_candidates`` items each user's target was ranked against (0 = first, 1 = last).
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    c = np.broadcast_to(np.asarray(n_candidates, dtype=np.float64), ranks.shape)
    out: dict[str, float] = {"users": float(len(ranks))}
    for k in (10, 20, 50):
        out[f"recall@{k}"] = float((ranks <= k).mean())
    out |= {k: v for k, v in ranking_metrics(ranks, (10, 20)).items() if k.startswith("ndcg") or k == "mrr"}
    out["precision@10"] = out["recall@10"] / 10
    out["f1@10"] = float(np.where(ranks <= 10, 2 / (10 + 1), 0.0).mean())  # P = 1/K, R = 1 on a hit
    pct = (ranks - 1) / np.maximum(1.0, c - 1)
    out["auc"] = float((1 - pct).mean())
    out["median_rank"] = float(np.median(ranks))
    out["median_percentile"] = float(np.median(pct))
    return out


def recall_curve(ranks: np.ndarray, ks: tuple[int, ...] = CURVE_KS) -> dict[str, float]:
    """Recall@K for each K in ``ks`` (keys are the Ks as strings)."""
    return {str(k): float((ranks <= k).mean()) for k in ks}


def ranked_items(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """The ``k`` best items of each row of ``scores [n, N]`` ``[n, k]``, best first.

    NaN ranks last, ties go to the lower item index, excluded items come after every candidate.
    """
    s = _finite(scores)
    N = s.shape[1]
    k = min(k, N)
    last = np.zeros_like(s, dtype=bool) if exclude is None else exclude
    order = np.lexsort((np.broadcast_to(np.arange(N), s.shape), -s, last), axis=1)  # last key sorts first
    return order[:, :k]


def relevance_metrics(scores: np.ndarray, relevant: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per query: P@k, R@k, F1@k, hit rate@k, NDCG@k and reciprocal rank for several relevant items.

    ``scores [n, N]``, ``relevant [n, N]`` (bool; every row holds at least one). The full ranking orders by
    score, NaN last, and puts non-relevant items before relevant ones on ties (pessimistic).
    """
    s = _finite(scores)
    rel = np.asarray(relevant, dtype=bool)
    n_rel = rel.sum(1)
    if (n_rel == 0).any():
        raise ValueError("every query needs at least one relevant item")
    order = np.lexsort((rel, -s), axis=1)  # by score, then non-relevant (False) first
    return ranked_relevance_metrics(np.take_along_axis(rel, order, axis=1), n_rel, k)


def ranked_relevance_metrics(ranked: np.ndarray, n_rel: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """:func:`relevance_metrics` from rankings already made: ``ranked [n, L]`` (bool) says whether the item at each
    position is relevant (a list shorter than the catalog, e.g. a search's top ``L`` hits, padded with False), and
    ``n_rel [n]`` (>= 1) how many relevant items each query has in all. A query whose list holds no relevant item
    has reciprocal rank 0 (MRR@L)."""
    ranked = np.asarray(ranked, dtype=bool)
    n_rel = np.asarray(n_rel)
    L = ranked.shape[1]
    if k > L:  # positions past the list's end hold nothing relevant
        ranked = np.pad(ranked, ((0, 0), (0, k - L)))
    disc = 1.0 / np.log2(np.arange(2, ranked.shape[1] + 2))  # position i (1-based) -> 1 / log2(i + 1)
    hits = ranked[:, :k].sum(1)
    p, r = hits / k, hits / n_rel  # P@k divides by k even when fewer than k items are ranked (as trec_eval)
    ideal = np.cumsum(disc)[np.minimum(k, n_rel) - 1]
    found = ranked.any(1)
    return {
        f"p@{k}": p,
        f"r@{k}": r,
        f"f1@{k}": np.where(hits > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0),
        f"hit_rate@{k}": hits / np.minimum(k, n_rel),
        f"ndcg@{k}": (ranked[:, :k] * disc[:k]).sum(1) / ideal,
        "rr": np.where(found, 1.0 / (ranked.argmax(1) + 1), 0.0),
    }


def beyond_accuracy(
    top: np.ndarray, item_vectors: np.ndarray, train_counts: np.ndarray, label_k: int | None = None
) -> dict[str, float]:
    """Coverage, intra-list diversity and novelty of the top-K lists ``top [n, K]`` (see the module docstring);
    keys end in ``@label_k`` (default: ``K``)."""
    K = top.shape[1]
    label = K if label_k is None else label_k
    N = len(item_vectors)
    counts = np.asarray(train_counts, dtype=np.float64)
    x = np.asarray(item_vectors, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    sums = x[top].sum(1)  # [n, D]: |sum|^2 = sum of the K x K cosine matrix, K of it on the diagonal
    mean_cos = ((sums * sums).sum(1) - K) / max(1, K * (K - 1))
    p = (counts + 1) / (counts.sum() + N)
    return {
        f"coverage@{label}": float(len(np.unique(top)) / N),
        f"diversity@{label}": float((1 - mean_cos).mean()) if K > 1 else 0.0,
        f"novelty@{label}": float((-np.log2(p[top])).mean()),
    }


def leave_out_metrics(
    scores: np.ndarray,
    targets: np.ndarray,
    exclude: np.ndarray,
    item_vectors: np.ndarray,
    train_counts: np.ndarray,
    k: int = BEYOND_K,
) -> dict[str, float]:
    """Every user->item figure of one method: accuracy, Recall@K curve (``curve@K`` keys), beyond accuracy.

    ``scores [n, N]`` rank the whole catalog for each user, ``exclude [n, N]`` masks the items the user saw
    (never the target), ``targets [n]`` are the held-out items.
    """
    ranks = target_ranks(scores, targets, exclude)
    candidates = exclude.shape[1] - exclude.sum(1)
    out = metrics_from_ranks(ranks, candidates)
    out |= {f"curve@{k}": v for k, v in recall_curve(ranks).items()}
    top = ranked_items(scores, min(k, int(candidates.min())), exclude)  # shorter only in a catalog smaller than k
    return out | beyond_accuracy(top, item_vectors, train_counts, label_k=k)


# ---------------------------------------------------------------------------------------------
# Ranked id lists (what Recommender.search returns), for the mode comparisons and known-item search
# ---------------------------------------------------------------------------------------------
def precision_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """``P@k = hits / k``: relevant ids among the first ``k`` of ``ranked`` (a shorter list still divides by k)."""
    return sum(1 for v in ranked[:k] if v in relevant) / k


def reciprocal_rank(ranked: Sequence[str], target: str, k: int) -> float:
    """``1 / position`` of ``target`` in the first ``k`` of ``ranked``; 0 when it is not there (MRR@k's term)."""
    for i, v in enumerate(ranked[:k], start=1):
        if v == target:
            return 1.0 / i
    return 0.0
