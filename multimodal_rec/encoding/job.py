"""An encode job: the rows of a catalog to run through the video tower, cut into resumable shards.

Embeddings are written in shards as they are produced, into a work directory beside the bundle
(``.<bundle>.work/``). A job killed at any moment and started again with the same command continues from
the last complete shard and ends with exactly the embeddings an uninterrupted run gives: shards start on
batch boundaries, so every clip is encoded in the same batch either way. Shards are kept only for the very
same job (model fingerprint, batch and shard size, and the rows to encode with their files' sizes and mtimes):
any other job discards them. An existing bundle made by the same model is updated incrementally: unchanged
videos keep their embeddings, new or changed ones are encoded, removed ones are dropped.

The engines (:mod:`~multimodal_rec.encoding.local`, :mod:`~multimodal_rec.encoding.ray_engine`) fill the
job's shards; :mod:`~multimodal_rec.encoding.finish` turns a complete job into a bundle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multimodal_rec.bundle import EMBEDDINGS_FILE, MANIFEST, SOURCES_FILE, file_stats, read_manifest
from multimodal_rec.data.tables import read_catalog
from multimodal_rec.encoding.embed import encode_videos  # noqa: F401 (re-exported: its historical home)
from multimodal_rec.errors import UserError
from multimodal_rec.model.checkpoint import load_model, model_fingerprint
from multimodal_rec.runtime import pick_device

LOG = logging.getLogger(__name__)
JOB_FILE = "job.json"


def check_factory(factory: str, d: int) -> None:
    """Refuse a bad FAISS factory string before any video is decoded."""
    if factory == "auto":
        return
    import faiss

    try:
        faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:  # FAISS's parse error carries a C++ backtrace: keep its first line
        msg = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise UserError(f"invalid FAISS index factory {factory!r}: {msg[:160]}") from None


def _source_key(video_id: Any, path: Any, size: Any, mtime_ns: Any) -> tuple[str, str, int, int]:
    """What identifies the content of a catalog row: same key, same file, same embedding."""
    return str(video_id), str(path), int(size), int(mtime_ns)


def _source_keys(df: pd.DataFrame) -> list[tuple[str, str, int, int]]:
    cols = (df["video_id"], df["abs_path"], df["size"], df["mtime_ns"])
    return [_source_key(*k) for k in zip(*cols, strict=True)]


def previous_bundle(out: Path, fingerprint: str, cat: pd.DataFrame) -> tuple[dict[int, np.ndarray], set[str]]:
    """(catalog row -> embedding kept from an existing bundle of the same model for unchanged files, the ids
    that bundle held). A missing, corrupt or other-model bundle reuses nothing."""
    if not (out / MANIFEST).is_file():
        return {}, set()
    try:
        manifest = read_manifest(out, verify=True)
        prev = pd.read_parquet(out / SOURCES_FILE)
    except (UserError, OSError, ValueError) as e:
        LOG.warning("not reusing %s: %s", out, e)
        return {}, set()
    prev_ids = set(prev["video_id"])
    if manifest.get("model_fingerprint") != fingerprint:
        LOG.info("existing bundle %s was made by another model: encoding everything", out)
        return {}, prev_ids
    xb = np.load(out / EMBEDDINGS_FILE)
    row_of = {k: i for i, k in enumerate(_source_keys(prev))}
    reuse = {}
    for row, k in enumerate(_source_keys(cat)):
        i = row_of.get(k)
        if i is not None:
            reuse[row] = xb[i]
    return reuse, prev_ids


class ShardWriter:
    """Complete shards of one job in ``work``: ``shard-K.npy`` (embeddings) then ``shard-K.json`` (the marker).

    ``job`` is the job's key: shards left in ``work`` by a job with another key are deleted, never reused.
    """

    def __init__(self, work: Path, job: dict[str, Any]) -> None:
        self.work = work
        job_path = work / JOB_FILE
        if work.exists():
            try:
                same = json.loads(job_path.read_text()) == job
            except (OSError, json.JSONDecodeError):
                same = False
            if not same:
                LOG.info("discarding shards of a different job in %s", work)
                shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        if not job_path.exists():
            tmp = work / f".{JOB_FILE}.tmp"
            tmp.write_text(json.dumps(job))
            tmp.replace(job_path)

    def load(self, k: int) -> tuple[np.ndarray, list[str]] | None:
        """(embeddings of the shard's rows, error per row with "" for encoded rows) if shard ``k`` is complete."""
        marker = self.work / f"shard-{k:06d}.json"
        if not marker.is_file():
            return None
        meta = json.loads(marker.read_text())
        return np.load(self.work / f"shard-{k:06d}.npy"), meta["errors"]

    def save(self, k: int, xb: np.ndarray, errors: list[str]) -> None:
        tmp = self.work / f".shard-{k:06d}.tmp.npy"
        np.save(tmp, xb)
        os.replace(tmp, self.work / f"shard-{k:06d}.npy")
        tmp_meta = self.work / f".shard-{k:06d}.json.tmp"
        tmp_meta.write_text(json.dumps({"errors": errors}))
        os.replace(tmp_meta, self.work / f"shard-{k:06d}.json")  # the shard counts as complete from here on


@dataclass
class EncodeJob:
    """What one encode call must do, shared by the engines: the rows to encode, cut into resumable shards.

    ``todo`` are the catalog rows not reused from a previous bundle; shard ``k`` is ``todo[k * shard_size :
    (k + 1) * shard_size]`` and its model batches are consecutive ``batch_size`` slices of it, so every engine
    puts each clip in the same batch (and gets the same embedding). ``done`` maps a complete shard to its
    embeddings (encoded rows only) and one error per row ("" for encoded rows); :meth:`open_shards` fills it with
    the shards an interrupted run of this very job left.
    """

    model_dir: Path
    catalog: Path
    out: Path
    model: Any  # MultimodalModel on the driver: its config, tokenizer and weights go into the bundle
    cfg: Any  # RunConfig
    fingerprint: str
    cat: pd.DataFrame
    reuse: dict[int, np.ndarray]  # catalog row -> embedding kept from the previous bundle
    prev_ids: set[str]  # the video ids of the previous bundle
    batch_size: int
    shard_size: int
    backend: str
    index_shards: int = 1
    todo: list[int] = field(init=False)  # the rows to encode: every row not reused
    shards: ShardWriter = field(init=False)
    done: dict[int, tuple[np.ndarray, list[str]]] = field(init=False, default_factory=dict)
    resumed_shards: frozenset[int] = field(init=False, default=frozenset())  # complete before this call

    def __post_init__(self) -> None:
        self.todo = [r for r in range(len(self.cat)) if r not in self.reuse]

    def open_shards(self) -> None:
        """Discard the work directory's shards if another job left them, else take its complete shards as done."""
        key = job_key(self.fingerprint, self.cat, self.todo, self.batch_size, self.shard_size)
        self.shards = ShardWriter(self.out.parent / f".{self.out.name}.work", key)
        self.done = {k: s for k in range(self.n_shards) if (s := self.shards.load(k)) is not None}
        self.resumed_shards = frozenset(self.done)
        if self.done:
            LOG.info("resuming: %d of %d shards already complete", len(self.done), self.n_shards)

    @property
    def n_shards(self) -> int:
        return (len(self.todo) + self.shard_size - 1) // self.shard_size

    @property
    def missing(self) -> list[int]:
        """Shards still to encode, in order."""
        return [k for k in range(self.n_shards) if k not in self.done]

    @property
    def resumed(self) -> int:
        """Rows taken from the shards of an interrupted run."""
        return sum(len(self.shard_rows(k)) for k in self.resumed_shards)

    def shard_rows(self, k: int) -> list[int]:
        return self.todo[k * self.shard_size : (k + 1) * self.shard_size]

    def shard_batches(self, k: int) -> list[list[int]]:
        """Catalog rows of each model batch of shard ``k`` (a shard is whole batches, but the very last)."""
        rows = self.shard_rows(k)
        return [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]

    def warn_skipped(self, rows: list[int], errors: list[str]) -> None:
        """Log each catalog row of a batch that could not be encoded."""
        for r, err in zip(rows, errors, strict=True):
            if err:
                LOG.warning("skipped %s: %s", self.cat["video_id"][r], err)

    def complete(self, k: int, parts: list[tuple[np.ndarray, list[str]]]) -> None:
        """Record shard ``k`` from its model batches' ``(xb, errors)``, in batch order: written to the work
        directory first, so a kill after this keeps it."""
        errors = [e for _, errs in parts for e in errs]
        xb = np.concatenate([np.zeros((0, self.model.cfg.embed_dim), np.float32), *(x for x, _ in parts)])
        if len(errors) != len(self.shard_rows(k)) or len(xb) != errors.count(""):
            raise RuntimeError(f"shard {k}: {len(xb)} embeddings, {len(errors)} rows with {errors.count('')} encoded")
        self.shards.save(k, xb, errors)
        self.done[k] = (xb, errors)


def job_key(fingerprint: str, cat: pd.DataFrame, todo: list[int], batch_size: int, shard_size: int) -> dict[str, Any]:
    """What a job's shards depend on: the model, how rows are batched, and which files fill each row."""
    sources = _source_keys(cat.iloc[todo])
    return {
        "model": fingerprint,
        "batch_size": batch_size,
        "shard_size": shard_size,
        "rows": hashlib.sha256(json.dumps([list(k) for k in sources]).encode()).hexdigest(),
    }


def _check_sizes(batch_size: int, shard_size: int | None, index_shards: int) -> int:
    """The shard size (default 8 batches) once the sizes are checked."""
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    if index_shards < 1:
        raise UserError(f"index shards must be >= 1, got {index_shards}")
    shard_size = shard_size or 8 * batch_size
    if shard_size % batch_size:
        raise UserError(f"shard size {shard_size} must be a multiple of the batch size {batch_size}")
    return shard_size


def plan_encode(
    model_dir: str | Path,
    catalog: str | Path,
    out: str | Path,
    batch_size: int = 32,
    device: str = "auto",
    shard_size: int | None = None,
    rebuild: bool = False,
    backend: str = "auto",
    index_factory: str | None = None,
    index_shards: int = 1,
) -> EncodeJob:
    """Validate the arguments, load the model and catalog, find what a previous bundle or shards already hold."""
    shard_size = _check_sizes(batch_size, shard_size, index_shards)
    model, cfg = load_model(model_dir, pick_device(device))
    if index_factory:
        cfg.index.factory = index_factory
    check_factory(cfg.index.factory, model.cfg.embed_dim + (1 if cfg.model.popularity_prior else 0))
    fingerprint = model_fingerprint(model_dir)
    cat = read_catalog(catalog)
    if index_shards > len(cat):
        raise UserError(f"{index_shards} index shards for {len(cat)} videos: use at most one shard per video")
    cat["size"], cat["mtime_ns"] = file_stats(list(cat["abs_path"]))
    out = Path(out).resolve()

    reuse, prev_ids = previous_bundle(out, fingerprint, cat)
    job = EncodeJob(
        Path(model_dir),
        Path(catalog),
        out,
        model=model,
        cfg=cfg,
        fingerprint=fingerprint,
        cat=cat,
        reuse={} if rebuild else reuse,
        prev_ids=prev_ids,
        batch_size=batch_size,
        shard_size=shard_size,
        backend=backend,
        index_shards=index_shards,
    )
    job.open_shards()
    return job
