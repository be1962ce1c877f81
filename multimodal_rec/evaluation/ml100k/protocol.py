"""The validation protocol of the ml-100k benchmark: what every method may look at while it is tuned and trained.

The test split (:func:`multimodal_rec.evaluation.ml100k.run.make_split`) keeps each user's last event as the
test target and gives the rest as training history. This module cuts that history once more: each user's last
*training* event is the validation target. Tuning (:mod:`.tune`) trains every method (the baselines and the towers
alike) on the events before it, stops each training at the epoch whose validation NDCG@10 was best (early
stopping) and picks the settings on the same figure. The final run trains the chosen setting on the whole
training history, the validation event included, for the epoch count validation chose, and reads the test
targets once, to score it; a method reads the whole training history as the user's input there.

A validation target is never a test target of the same user: they are different positions of one history, and
ml-100k's user-movie pairs are unique (a user whose two last events were one movie would be left out of both).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from multimodal_rec.evaluation.metrics import target_ranks
from multimodal_rec.evaluation.simple import seen_mask

VAL_METRIC = "ndcg@10"


@dataclass(frozen=True)
class Validation:
    """Each user's training history split once more: ``seqs[u]`` train, ``targets[u]`` validates (-1: none)."""

    seqs: list[np.ndarray]  # per user: the training rows without the last one, oldest first
    targets: np.ndarray  # [n_users] the last training row; -1 where the history has fewer than 2 events

    @property
    def users(self) -> np.ndarray:
        """The users that have a validation target (and are not already holding it in their history)."""
        ok = self.targets >= 0
        for u in np.flatnonzero(ok):
            ok[u] = not np.isin(self.targets[u], self.seqs[u])
        return np.flatnonzero(ok)


def validation_split(train_seqs: Sequence[np.ndarray]) -> Validation:
    """Cut each training history's last event off as its validation target; the test split is never passed in."""
    seqs = [np.asarray(s, dtype=np.int64) for s in train_seqs]
    targets = np.array([s[-1] if len(s) >= 2 else -1 for s in seqs], dtype=np.int64)
    return Validation([s[:-1] if len(s) >= 2 else s for s in seqs], targets)


def validation_ndcg(scores: np.ndarray, val: Validation, users: np.ndarray | None = None) -> float:
    """NDCG@10 of the validation targets under ``scores``, each user's training items excluded.

    ``scores`` has one row per user of ``users`` (default: every user of ``val.seqs``, in order).
    """
    users = np.arange(len(val.seqs)) if users is None else np.asarray(users)
    pos = {int(u): i for i, u in enumerate(users)}
    keep = [u for u in val.users if int(u) in pos]
    if not keep:
        return 0.0
    rows = np.array([pos[int(u)] for u in keep])
    exclude = seen_mask([val.seqs[u] for u in keep], scores.shape[1])
    ranks = target_ranks(np.asarray(scores)[rows], val.targets[keep], exclude)
    return float(np.where(ranks <= 10, 1.0 / np.log2(ranks + 1), 0.0).mean())
