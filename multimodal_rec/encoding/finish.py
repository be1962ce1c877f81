"""The end of an encode job: embeddings of the previous bundle and of the shards, in catalog order, into a bundle.

The bundle is written atomically by :func:`multimodal_rec.bundle.save_bundle` (the one bundle writer); the job's
work directory is dropped once the bundle holds everything.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multimodal_rec.bundle import INDEX_FILE, Bundle, save_bundle
from multimodal_rec.encoding.job import EncodeJob
from multimodal_rec.errors import UserError
from multimodal_rec.index.build import build_index, choose_factory
from multimodal_rec.index.shards import build_sharded_index, shard_file_names
from multimodal_rec.model.prior import COUNTS_FILE, PRIOR_COLUMN, index_vectors, read_counts

LOG = logging.getLogger(__name__)


@dataclass
class EncodeResult:
    bundle: Path
    encoded: int  # clips run through the model by this call
    skipped: list[dict[str, str]]  # video_id, path, reason
    seconds: float
    reused: int = 0  # embeddings kept from the previous bundle (unchanged videos)
    resumed: int = 0  # clips taken from the shards of an interrupted run
    removed: int = 0  # videos of the previous bundle no longer in the catalog
    total: int = 0  # videos in the new bundle


def assemble(job: EncodeJob) -> tuple[np.ndarray, list[str]]:
    """(embedding of every catalog row ``[N, D]``, zeros where it failed; one error per row, "" where encoded).

    A shard holds embeddings for its encoded rows only: the ``i``-th row without an error owns ``xb[i]``.
    """
    emb = np.zeros((len(job.cat), job.model.cfg.embed_dim), np.float32)
    errors = [""] * len(job.cat)
    for r, x in job.reuse.items():
        emb[r] = x
    for k in range(job.n_shards):
        xb, errs = job.done[k]
        rows = job.shard_rows(k)
        for r, err in zip(rows, errs, strict=True):
            errors[r] = err
        good = [r for r, err in zip(rows, errs, strict=True) if not err]
        if len(good) != len(xb):  # a row shift would give every later clip a neighbour's embedding
            raise RuntimeError(f"shard {k}: {len(xb)} embeddings for {len(good)} encoded rows")
        emb[np.array(good, dtype=np.int64)] = xb
    return emb, errors


def _indexes(job: EncodeJob, vectors: np.ndarray, encoded: pd.DataFrame, fields: dict[str, Any]) -> dict[str, Any]:
    """The bundle's index file(s) by name; records the factory used (and the shard files) in ``fields``."""
    if job.index_shards == 1:
        if fields["index"] == "auto":  # recorded as what was chosen for this catalog size
            fields["index"] = choose_factory(len(vectors), vectors.shape[1])
        return {INDEX_FILE: build_index(vectors, fields["index"])}
    names = shard_file_names(job.index_shards)  # each shard file's checksum is in "files" like every other file
    parts = build_sharded_index(vectors, list(encoded["video_id"]), job.index_shards, job.cfg.index.factory)
    fields.update(index_shards=job.index_shards, index_files=names)
    return dict(zip(names, parts, strict=True))


def _skipped(cat: pd.DataFrame, errors: list[str]) -> list[dict[str, str]]:
    return [
        {"video_id": v, "path": p, "reason": e}
        for v, p, e in zip(cat["video_id"], cat["path"], errors, strict=True)
        if e
    ]


def finish_encode(job: EncodeJob, t0: float) -> EncodeResult:
    """Assemble the embeddings (previous bundle + shards), write the bundle atomically, drop the work directory."""
    cat, cfg = job.cat, job.cfg
    emb, errors = assemble(job)
    ok = np.array([not e for e in errors], dtype=bool)
    skipped = _skipped(cat, errors)
    if not ok.any():
        first = skipped[0]["reason"] if skipped else "empty catalog"
        raise UserError(f"no video of {job.catalog} could be encoded ({len(skipped)} skipped; first: {first})")
    xb = emb[ok]
    if job.index_shards > len(xb):
        raise UserError(f"{job.index_shards} index shards for {len(xb)} videos: use at most one shard per video")
    encoded = cat[ok].reset_index(drop=True)
    counts = read_counts(job.model_dir / COUNTS_FILE)
    encoded[PRIOR_COLUMN] = [counts.get(v, 0) for v in encoded["video_id"]]
    fields: dict[str, Any] = {
        "model": cfg.to_dict(),
        "model_fingerprint": job.fingerprint,
        "embed_dim": int(xb.shape[1]),
        "index": cfg.index.factory,
        "catalog_source": str(job.catalog.resolve()),
    }
    indexes = _indexes(job, index_vectors(xb, encoded, cfg.model.popularity_prior), encoded, fields)
    meta = encoded.drop(columns=["size", "mtime_ns"])
    bundle = Bundle(job.model, cfg, meta, xb, sources=encoded, skipped=skipped, indexes=indexes, fields=fields)
    path = save_bundle(job.out, bundle)
    shutil.rmtree(job.shards.work, ignore_errors=True)  # the bundle holds everything now
    new_rows = [r for k in range(job.n_shards) if k not in job.resumed_shards for r in job.shard_rows(k)]
    n_new = sum(1 for r in new_rows if not errors[r])
    removed = len(job.prev_ids - set(cat["video_id"]))
    LOG.info(
        "bundle %s: %d videos (%d encoded, %d reused, %d from shards), %d skipped, %d removed",
        *(path, len(xb), n_new, len(job.reuse), job.resumed, len(skipped), removed),
    )
    return EncodeResult(path, n_new, skipped, time.time() - t0, len(job.reuse), job.resumed, removed, len(xb))
