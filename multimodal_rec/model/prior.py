"""The popularity prior, in one place: how training counts are stored, and how the index column encodes them.

Training writes each video's training interactions to ``item_counts.csv`` in the run directory; encoding copies
them into the catalog's ``train_interactions`` column; the index holds one extra column ``log1p(count) /
PRIOR_SCALE`` beside the unit video vectors. A text query carries 0 there (pure cosine); a user query carries
``coef * PRIOR_SCALE``, where ``coef`` is the model's learned weight in cosine units, so its score is
``cosine + coef * log1p(count)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

COUNTS_FILE = "item_counts.csv"  # run directory: video_id, count (training interactions)
PRIOR_COLUMN = "train_interactions"  # catalog column: the video's interactions seen in training
PRIOR_SCALE = 100.0  # the index stores log1p(count) / PRIOR_SCALE so the column stays small next to unit
# vectors (approximate indexes cluster on it otherwise); user queries carry coef * PRIOR_SCALE: same scores


def write_counts(counts: dict[str, int], path: Path) -> None:
    """Training interactions per video id, written atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    pd.DataFrame({"video_id": list(counts), "count": list(counts.values())}).to_csv(tmp, index=False)
    tmp.replace(path)


def read_counts(path: Path) -> dict[str, int]:
    """What :func:`write_counts` wrote; no file (a model trained without interactions) is no counts."""
    if not path.is_file():
        return {}
    df = pd.read_csv(path, dtype={"video_id": str})
    return dict(zip(df["video_id"], df["count"].astype(int), strict=True))


def index_vectors(xb: np.ndarray, catalog: Any, popularity_prior: bool) -> np.ndarray:
    """What the index holds: ``xb`` plus, with the popularity prior, a last column ``log1p(count) / PRIOR_SCALE``."""
    if not popularity_prior:
        return xb
    prior = np.log1p(catalog[PRIOR_COLUMN].to_numpy(dtype=np.float32))[:, None] / PRIOR_SCALE
    return np.hstack([xb, prior]).astype(np.float32)


class IndexVectors:
    """What the index holds, ``[embeddings | prior column]``, without copying the embeddings.

    ``np.hstack`` of a memory-mapped ``[N, D]`` array is a private ``[N, D + 1]`` copy in every serving process (at 1M
    videos of D = 128, 0.5 GB each); this view keeps the embeddings mapped (shared between worker processes through
    the page cache) and only the ``[N]`` prior column in memory. Indexing by rows (``xb[rows]``) returns the joined
    rows; ``np.asarray(xb)`` builds the whole array (a live update or an evaluation, not a search).
    """

    def __init__(self, embeddings: np.ndarray, prior: np.ndarray) -> None:
        if prior.shape != (len(embeddings),):
            raise ValueError(f"prior column of shape {prior.shape} for {len(embeddings)} embeddings")
        self.embeddings, self.prior = embeddings, np.asarray(prior, np.float32)
        self.shape = (int(embeddings.shape[0]), int(embeddings.shape[1]) + 1)
        self.dtype = np.dtype(np.float32)
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):  # xb[rows, cols]: the rows joined, then the columns
            if len(key) != 2:
                raise IndexError(f"too many indices for a 2-d array: {len(key)}")
            return self[key[0]][..., key[1]]
        emb = np.asarray(self.embeddings[key], np.float32)
        return np.concatenate([emb, np.asarray(self.prior[key], np.float32)[..., None]], axis=-1)

    @property
    def T(self) -> np.ndarray:  # the transpose, built whole (numpy's name)
        return np.asarray(self).T

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)


def index_view(xb: np.ndarray, catalog: Any, popularity_prior: bool) -> np.ndarray | IndexVectors:
    """:func:`index_vectors` without copying ``xb``: ``xb`` itself without the prior, else an :class:`IndexVectors`."""
    if not popularity_prior:
        return xb
    return IndexVectors(xb, np.log1p(catalog[PRIOR_COLUMN].to_numpy(dtype=np.float32)) / PRIOR_SCALE)


def query_prior(coef: float) -> float:
    """The value a user query carries in the prior column, for a learned coefficient ``coef`` (cosine units)."""
    return coef * PRIOR_SCALE


def with_prior_column(xq: np.ndarray, width: int, value: float) -> np.ndarray:
    """Pad query vectors ``[n, D]`` to the index's ``width`` (D, or D + 1 with the prior column) with ``value``."""
    if xq.shape[1] == width:
        return xq
    return np.hstack([xq, np.full((len(xq), 1), value, dtype=np.float32)])
