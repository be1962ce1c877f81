"""ID-based baselines on tiny synthetic worlds: shapes, determinism, and that each learns the obvious signal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multimodal_rec.errors import UserError
from multimodal_rec.evaluation.baselines import bpr_mf, mult_dae, sasrec


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: a second thread only adds synchronisation (and stalls badly on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cycle_world(n_items: int = 12, n_users: int = 40, length: int = 16, seed: int = 0) -> tuple[list, np.ndarray]:
    """Users walk the cycle i -> i+1 mod n from random starts; returns (histories, true next items)."""
    rng = np.random.default_rng(seed)
    seqs, nxt = [], []
    for _ in range(n_users):
        start = int(rng.integers(n_items))
        walk = [(start + k) % n_items for k in range(length + 1)]
        seqs.append(walk[:-1])
        nxt.append(walk[-1])
    return seqs, np.array(nxt)


def cluster_world(n_clusters: int = 3, per_cluster: int = 8, n_users: int = 36, seed: int = 0) -> tuple[list, list]:
    """Each user consumes a random 60% of its cluster's items; returns (histories, each user's cluster items)."""
    rng = np.random.default_rng(seed)
    seqs, own = [], []
    for u in range(n_users):
        items = np.arange(per_cluster) + (u % n_clusters) * per_cluster
        seqs.append([int(i) for i in rng.choice(items, size=int(0.6 * per_cluster), replace=False)])
        own.append(items)
    return seqs, own


def unseen_own_beats_others(scores: np.ndarray, seqs: list, own: list) -> float:
    """Fraction of users whose every unseen own-cluster item outscores every other-cluster item."""
    ok = []
    for u, s in enumerate(seqs):
        others = np.setdiff1d(np.arange(scores.shape[1]), own[u])
        unseen = np.setdiff1d(own[u], s)
        ok.append(scores[u, unseen].min() > scores[u, others].max())
    return float(np.mean(ok))


def test_sasrec_learns_the_cycle() -> None:
    seqs, nxt = cycle_world()
    scores = sasrec(seqs, 12, dim=32, layers=1, heads=2, max_len=16, epochs=30, lr=5e-3, dropout=0.0)
    assert scores.shape == (40, 12) and np.isfinite(scores).all()
    top3 = np.argsort(-scores, axis=1)[:, :3]
    assert (top3 == nxt[:, None]).any(1).mean() >= 0.8


def test_bpr_mf_separates_clusters() -> None:
    seqs, own = cluster_world()
    # strong L2: BPR treats the unseen cluster items as negatives, so an unregularised fit memorises them away
    scores = bpr_mf(seqs, 24, dim=16, epochs=100, lr=0.05, reg=0.1)
    assert scores.shape == (36, 24) and np.isfinite(scores).all()
    assert unseen_own_beats_others(scores, seqs, own) >= 0.8


def test_mult_dae_separates_clusters() -> None:
    seqs, own = cluster_world()
    scores = mult_dae(seqs, 24, hidden=32, latent=8, epochs=60, lr=1e-2)
    assert scores.shape == (36, 24) and np.isfinite(scores).all()
    assert unseen_own_beats_others(scores, seqs, own) >= 0.8


@pytest.mark.parametrize(
    "fn, kw",
    [
        (bpr_mf, {"dim": 8, "epochs": 2}),
        (mult_dae, {"hidden": 16, "latent": 4, "epochs": 2}),
        (sasrec, {"dim": 16, "layers": 1, "max_len": 8, "epochs": 2}),
    ],
)
def test_same_seed_same_scores_and_odd_inputs(fn, kw) -> None:
    # an empty history, a one-item history, a long one (longer than max_len) and repeated items
    seqs = [[], [3], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3], [5, 5, 5], [9, 8, 7]]
    a, b = fn(seqs, 10, seed=1, **kw), fn(seqs, 10, seed=1, **kw)
    assert a.shape == (5, 10) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, fn(seqs, 10, seed=2, **kw))


def test_bad_item_ids_are_refused() -> None:
    with pytest.raises(UserError, match="item ids"):
        bpr_mf([[0, 10]], 10, epochs=1)
    with pytest.raises(UserError, match="empty"):
        mult_dae([], 10, epochs=1)
    with pytest.raises(UserError, match="divisible"):
        sasrec([[0, 1]], 10, dim=10, heads=3, epochs=1)
