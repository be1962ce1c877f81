"""The shared user->item evaluation on hand-made cases: the seen-item mask, users whose target was seen before,
the simple baselines (one copy for the bundle evaluation and ml-100k) and the beyond-accuracy figures."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd

from multimodal_rec.evaluation.bundle_eval import format_report, user_to_video
from multimodal_rec.evaluation.metrics import leave_out_metrics
from multimodal_rec.evaluation.simple import (
    JITTER,
    mean_history_scores,
    popularity_scores,
    random_scores,
    seen_mask,
    target_not_seen,
)

ANGLES = np.radians([0, 20, 40, 60, 80, 100])  # video i is the unit vector at ANGLES[i]


class _StubRec:
    """Six videos on an arc; a history item's text is its video id and embeds as that video's vector; the
    user tower is the mean of the history's vectors (no popularity prior)."""

    def __init__(self) -> None:
        self.video_ids = [f"v{i}" for i in range(6)]
        self.row_of = {v: i for i, v in enumerate(self.video_ids)}
        self.embeddings = np.stack([np.cos(ANGLES), np.sin(ANGLES)], 1).astype(np.float32)
        self.xb = self.embeddings
        self.prior_coef = 0.0
        self.model = SimpleNamespace(cfg=SimpleNamespace(user=SimpleNamespace(max_history=8)))

    def __len__(self) -> int:
        return len(self.video_ids)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self.embeddings[[self.row_of[t] for t in texts]]

    def user_queries(self, histories: list[list[str]], prior: bool = True) -> np.ndarray:
        u = np.stack([self.encode_queries(h).mean(0) for h in histories])
        return u / np.linalg.norm(u, axis=1, keepdims=True)


def _interactions(events: dict[str, list[str]]) -> SimpleNamespace:
    rows = [(u, v, t, v) for u, vs in events.items() for t, v in enumerate(vs)]
    return SimpleNamespace(interactions=pd.DataFrame(rows, columns=["user_id", "video_id", "timestamp", "text"]))


def test_user_to_video_masks_seen_items_and_leaves_out_users_who_saw_their_target() -> None:
    ds = _interactions({"u1": ["v0", "v1", "v2"], "u2": ["v3", "v4", "v3"], "u3": ["v5", "v0"]})
    runs, target_seen = user_to_video(_StubRec(), ds, seeds=1, id_baselines=False)
    assert target_seen == 1  # u2 rewatched v3: a seen item is never recommended, so u2 is left out
    m = runs[0]["user_tower"]
    # u1: history at 10 deg, v0 and v1 masked: v2 (30 deg away) is first of 4 candidates (3rd unmasked).
    # u3: history at 100 deg, v5 masked: v0 (100 deg away) is last of 5 candidates (6th unmasked).
    assert m["users"] == 2 and m["median_rank"] == 3.0
    assert math.isclose(m["mrr"], (1 + 1 / 5) / 2) and m["recall@10"] == 1.0
    assert math.isclose(m["auc"], ((4 - 1) / 3 + (5 - 5) / 4) / 2)
    # top lists (4 items: u1 has only 4 candidates): u1 [2, 3, 4, 5], u3 [4, 3, 2, 1]
    assert math.isclose(m["coverage@10"], 5 / 6)
    gaps = np.radians([20, 40, 60, 20, 40, 20])  # pairwise angles within either list
    assert math.isclose(m["diversity@10"], float(np.mean(1 - np.cos(gaps))), rel_tol=1e-6)
    # training counts [1, 1, 0, 1, 1, 1] (every event but each user's last): p = (c + 1) / (5 + 6)
    assert math.isclose(m["novelty@10"], (2 * math.log2(11) + 6 * math.log2(11 / 2)) / 8)
    assert runs[0]["mean_history"]["mrr"] == m["mrr"]  # the same scorer in this stub
    assert set(runs[0]) == {"user_tower", "mean_history", "popularity", "random"}
    # popularity: u1's target v2 has no training event and ranks last of 4; u3's ties are broken by the jitter
    assert runs[0]["popularity"]["users"] == 2 and runs[0]["popularity"]["auc"] <= 0.5


def test_everyone_having_seen_their_target_gives_no_table_but_says_why() -> None:
    ds = _interactions({"u1": ["v0", "v0"], "u2": ["v1", "v2", "v1"]})
    assert user_to_video(_StubRec(), ds, id_baselines=False) == ([], 2)
    res = {"videos": 6, "held_out_videos": 0, "user_to_video": {}, "users_target_seen": 2}
    assert "every user's target was already in their history (2)" in format_report(res)


def test_leave_out_metrics_rank_only_unseen_items() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    seen = seen_mask([[0, 1], [5]], 6)
    targets = np.array([3, 0])
    assert target_not_seen(seen, targets).all() and not target_not_seen(seen, np.array([1, 5])).any()
    m = leave_out_metrics(scores, targets, seen, np.eye(6), np.zeros(6), k=2)
    assert m["median_rank"] == 3.5 and math.isclose(m["mrr"], (1 / 2 + 1 / 5) / 2)  # ranks 2 (of 4) and 5 (of 5)
    assert m["coverage@2"] == 3 / 6  # top-2 lists [2, 3] and [4, 3]
    assert m["diversity@2"] == 1.0  # orthogonal item vectors


def test_simple_baselines() -> None:
    rng = np.random.default_rng(0)
    pop = popularity_scores(np.array([3, 0, 3, 1]), 2, rng)
    assert pop.shape == (2, 4) and (pop[0] == pop[1]).all()
    assert np.argsort(-pop[0])[2:].tolist() == [3, 1] and np.abs(pop[0] - [3, 0, 3, 1]).max() < JITTER
    assert (random_scores(2, 4, np.random.default_rng(5)) == np.random.default_rng(5).random((2, 4))).all()
    r = 1 / math.sqrt(2)
    vecs = np.array([[1.0, 0.0], [0.0, 1.0], [r, r]])
    s = mean_history_scores([vecs[[0, 1]], vecs[[0]]], vecs)
    assert np.allclose(s[0], [r, r, 1.0]) and np.allclose(s[1], [1, 0, r])
