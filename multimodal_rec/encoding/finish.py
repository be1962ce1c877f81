"""The end of an encode job: embeddings of the previous bundle and of the shards, in catalog order, into a bundle.

The bundle is written atomically by :func:`multimodal_rec.bundle.save_bundle` (the one bundle writer); the job's
work directory is dropped once the bundle holds everything.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multimodal_rec.bundle import DURATION_COLUMN, INDEX_FILE, Bundle, save_bundle
from multimodal_rec.encoding.embed import EncodedRows
from multimodal_rec.encoding.items import ItemVectors, combine
from multimodal_rec.encoding.job import EncodeJob
from multimodal_rec.encoding.known_texts import known_text_features
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


def assemble(job: EncodeJob) -> EncodedRows:
    """The raw outputs of every catalog row, in catalog order: kept from the previous bundle or from the shards."""
    per_row: dict[int, EncodedRows] = dict(job.reuse)
    for k in range(job.n_shards):
        rows = job.shard_rows(k)
        parts = job.done[k].split()
        if len(parts) != len(rows):  # a row shift would give every later video a neighbour's vectors
            raise RuntimeError(f"shard {k}: {len(parts)} encoded rows for {len(rows)} catalog rows")
        per_row.update(zip(rows, parts, strict=True))
    return EncodedRows.concat([per_row[r] for r in range(len(job.cat))], job.model.cfg.embed_dim)


def _segment_parts(rows: EncodedRows, iv: ItemVectors, ids: list[str]) -> dict[str, Any]:
    """The bundle's segment fields when some video has more than one segment, else none."""
    counts = np.bincount(iv.seg_row, minlength=len(ids))
    if not len(counts) or counts.max() <= 1:
        return {}
    D = iv.seg_vectors.shape[1]
    raw = [p.seg if len(p.seg) else np.zeros((1, D), np.float32) for p in rows.split() if not p.errors[0]]
    segments = pd.DataFrame(
        {"video_id": [ids[r] for r in iv.seg_row], "start_s": iv.spans[:, 0], "end_s": iv.spans[:, 1]}
    )
    segments["row"] = iv.seg_row
    factory = choose_factory(len(iv.seg_vectors), D)
    return {
        "segments": segments,
        "segment_embeddings": iv.seg_vectors,
        "segment_content": np.concatenate(raw).astype(np.float32, copy=False),
        "segment_index": build_index(iv.seg_vectors, factory),
    }


def _durations(iv: ItemVectors, n: int) -> np.ndarray:
    """Each encoded video's length in seconds (the end of its last segment; 0 without a video file)."""
    dur = np.zeros(n)
    np.maximum.at(dur, iv.seg_row, iv.spans[:, 1])
    return dur


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
    rows = assemble(job)
    errors = rows.errors
    iv = combine(rows, job.enc.text_weight, job.text_known)
    ok = np.array([not e for e in errors], dtype=bool)
    skipped = _skipped(cat, errors)
    if not ok.any():
        first = skipped[0]["reason"] if skipped else "empty catalog"
        raise UserError(f"no video of {job.catalog} could be encoded ({len(skipped)} skipped; first: {first})")
    xb = iv.item
    if job.index_shards > len(xb):
        raise UserError(f"{job.index_shards} index shards for {len(xb)} videos: use at most one shard per video")
    encoded = cat[ok].reset_index(drop=True)
    counts = read_counts(job.model_dir / COUNTS_FILE)
    encoded[PRIOR_COLUMN] = [counts.get(v, 0) for v in encoded["video_id"]]
    sources = encoded.assign(**{DURATION_COLUMN: _durations(iv, len(encoded))})
    fields: dict[str, Any] = {
        "model": cfg.to_dict(),
        "model_fingerprint": job.fingerprint,
        "embed_dim": int(xb.shape[1]),
        "index": cfg.index.factory,
        "catalog_source": str(job.catalog.resolve()),
        "encode": asdict(job.enc),
    }
    indexes = _indexes(job, index_vectors(xb, encoded, cfg.model.popularity_prior), encoded, fields)
    meta = encoded.drop(columns=["size", "mtime_ns"])
    bundle = Bundle(job.model, cfg, meta, xb, sources=sources, skipped=skipped, indexes=indexes, fields=fields)
    if iv.text is not None and any(job.texts[r] for r in np.flatnonzero(ok)):
        bundle.content, bundle.text = iv.content, iv.text
    for name, value in _segment_parts(rows, iv, list(encoded["video_id"])).items():
        setattr(bundle, name, value)
    bundle.text_features, bundle.text_feature_keys = known_text_features(job.model, meta)  # history items: no trunk
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
