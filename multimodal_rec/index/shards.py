"""A sharded index: one FAISS index per shard (a stable hash of the video id), ids = global row numbers;
search merges the shards' top-k (:func:`merge_shards`)."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np

from multimodal_rec.index.build import build_index

LOG = logging.getLogger(__name__)


def shard_of(video_ids: list[str], n_shards: int) -> np.ndarray:
    """Shard of each video: a stable hash of its id (blake2b, not Python's salted ``hash``) modulo ``n_shards``.

    Stable across processes, machines and catalog order, so a video stays in its shard when the catalog grows.
    """
    h = [int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8).digest(), "little") for v in video_ids]
    return (np.array(h, dtype=np.uint64) % np.uint64(n_shards)).astype(np.int64)


def shard_file_names(n_shards: int) -> list[str]:
    """The bundle's index files for ``n_shards`` shards."""
    return [f"index-{i:05d}-of-{n_shards:05d}.faiss" for i in range(n_shards)]


def build_sharded_index(xb: np.ndarray, video_ids: list[str], n_shards: int, factory: str = "auto") -> list[Any]:
    """One index per shard (:func:`shard_of`), each an ``IndexIDMap`` holding the global row ids of its vectors.

    ``factory="auto"`` chooses by each shard's own size: a shard is what one machine serves.
    """
    import faiss

    xb = np.ascontiguousarray(xb, dtype=np.float32)
    assign = shard_of(video_ids, n_shards)
    parts = []
    for s in range(n_shards):
        rows = np.flatnonzero(assign == s)
        if len(rows):
            parts.append(build_index(xb[rows], factory, ids=rows))
        else:  # an empty shard (tiny catalogs): nothing to train on
            parts.append(faiss.IndexIDMap(faiss.IndexFlatIP(xb.shape[1])))
    return parts


def merge_shards(parts: list[Any]) -> Any:
    """One searchable index over ``parts`` (each holding global ids): ``faiss.IndexShards`` queries every shard
    in parallel and merges their top-k; results equal one index over all vectors for exact (Flat) shards."""
    import faiss

    shards = faiss.IndexShards(parts[0].d, True, False)  # threaded, successive_ids=False: keep each shard's ids
    for p in parts:
        shards.add_shard(p)
    return shards
