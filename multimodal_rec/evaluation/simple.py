"""The simple baselines and the seen-item mask, one copy for the bundle evaluation and for ml-100k.

Every function speaks item rows (integers into the catalog) and returns a dense ``[n_users, n_items]`` score
matrix, ranked by :func:`multimodal_rec.evaluation.metrics.leave_out_metrics` like every other method. Random
draws come from the caller's generator, in the order the caller makes them (popularity's tie-break jitter,
then the random scores), so a seed reproduces a run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

LOG = logging.getLogger(__name__)
JITTER = 1e-6  # popularity's random tie-break: far below one interaction, so it only orders equal counts


def seen_mask(seqs: Sequence[Sequence[int]], n_items: int) -> np.ndarray:
    """``[n_users, n_items]`` bool: True where user ``u`` interacted with the item before the target."""
    seen = np.zeros((len(seqs), n_items), dtype=bool)
    for u, s in enumerate(seqs):
        seen[u, np.asarray(s, dtype=np.int64)] = True
    return seen


def target_not_seen(seen: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Users whose target is not among their earlier items (the others can never be hit: a seen item is
    never recommended, so they are left out of the metrics and counted instead)."""
    return ~seen[np.arange(len(targets)), targets]


def popularity_scores(counts: np.ndarray, n_users: int, rng: np.random.Generator) -> np.ndarray:
    """Every user gets the training interaction counts, equal counts ordered by one random draw."""
    return np.tile(np.asarray(counts, dtype=np.float64) + JITTER * rng.random(len(counts)), (n_users, 1))


def random_scores(n_users: int, n_items: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform random scores: the floor every method must beat."""
    return rng.random((n_users, n_items))


def mean_history_scores(histories: Sequence[np.ndarray], item_vectors: np.ndarray) -> np.ndarray:
    """Each user's mean history vector (of ``[h, D]``), normalised, dotted with every item vector ``[N, D]``: the
    cosine, as both callers pass unit-norm item vectors."""
    u = np.stack([np.asarray(h).mean(0) for h in histories])  # [n_users, D], in the vectors' own dtype
    u /= np.linalg.norm(u, axis=1, keepdims=True).clip(1e-12)
    return u @ np.asarray(item_vectors).T
