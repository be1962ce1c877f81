"""An encode job: the rows of a catalog to run through the towers, cut into resumable shards.

Each row is cut into segments (``encode.segment_seconds``, ``encode.max_segments``) and has a text (its
``encode.text_columns``). A shard stores every row's raw outputs (:class:`~multimodal_rec.encoding.embed.EncodedRows`:
segment vectors, spans, text vector, error), so resuming is at segment granularity.
Shards are written as they are produced, into a work directory beside the bundle
(``.<bundle>.work/``). A job killed at any moment and started again with the same command continues from
the last complete shard and ends with exactly the embeddings an uninterrupted run gives: shards start on
batch boundaries, so every clip is encoded in the same batch either way. Shards are kept only for the very
same job (model fingerprint, batch and shard size, the segment and text settings, and the rows to encode with their
files' sizes and mtimes and their texts): any other job discards them. An existing bundle made by the same model is
updated incrementally (:mod:`~multimodal_rec.encoding.reuse`): unchanged videos keep their segments, new or changed
ones are encoded, removed ones are dropped.

The engines (:mod:`~multimodal_rec.encoding.local`, :mod:`~multimodal_rec.encoding.ray_engine`) fill the
job's shards; :mod:`~multimodal_rec.encoding.finish` turns a complete job into a bundle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from multimodal_rec.bundle import file_stats
from multimodal_rec.config import EncodeConfig, build_config
from multimodal_rec.data.tables import read_catalog
from multimodal_rec.encoding.embed import (
    EncodedRows,
    encode_videos,  # noqa: F401 (re-exported: its historical home)
)
from multimodal_rec.encoding.items import row_texts, text_columns
from multimodal_rec.encoding.reuse import previous_bundle, source_keys
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


class ShardWriter:
    """Complete shards of one job in ``work``: ``shard-K.npz`` (:class:`EncodedRows`) then ``shard-K.json`` (the
    marker, with the rows' errors).

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

    def load(self, k: int) -> EncodedRows | None:
        """The raw outputs of shard ``k``'s rows if it is complete."""
        marker = self.work / f"shard-{k:06d}.json"
        if not marker.is_file():
            return None
        rows = EncodedRows.from_bytes((self.work / f"shard-{k:06d}.npz").read_bytes())
        if rows.errors != json.loads(marker.read_text())["errors"]:
            return None  # not the marker's shard: encode it again
        return rows

    def save(self, k: int, rows: EncodedRows) -> None:
        tmp = self.work / f".shard-{k:06d}.tmp.npz"
        tmp.write_bytes(rows.to_bytes())
        os.replace(tmp, self.work / f"shard-{k:06d}.npz")
        tmp_meta = self.work / f".shard-{k:06d}.json.tmp"
        tmp_meta.write_text(json.dumps({"errors": rows.errors}))
        os.replace(tmp_meta, self.work / f"shard-{k:06d}.json")  # the shard counts as complete from here on


@dataclass
class EncodeJob:
    """What one encode call must do, shared by the engines: the rows to encode, cut into resumable shards.

    ``todo`` are the catalog rows not reused from a previous bundle; shard ``k`` is ``todo[k * shard_size :
    (k + 1) * shard_size]`` and its model batches are consecutive ``batch_size`` slices of it, so every engine
    puts each video in the same batch (and gets the same vectors). ``done`` maps a complete shard to its rows' raw
    outputs; :meth:`open_shards` fills it with the shards an interrupted run of this very job left. ``texts`` is
    each catalog row's text ("" = none).
    """

    model_dir: Path
    catalog: Path
    out: Path
    model: Any  # MultimodalModel on the driver: its config, tokenizer and weights go into the bundle
    cfg: Any  # RunConfig
    fingerprint: str
    cat: pd.DataFrame
    reuse: dict[int, EncodedRows]  # catalog row -> its raw outputs kept from the previous bundle
    prev_ids: set[str]  # the video ids of the previous bundle
    batch_size: int
    shard_size: int
    backend: str
    index_shards: int = 1
    enc: EncodeConfig = field(default_factory=EncodeConfig)
    texts: list[str] = field(default_factory=list)
    text_known: bool = False  # the catalog has one of the text columns
    todo: list[int] = field(init=False)  # the rows to encode: every row not reused
    shards: ShardWriter = field(init=False)
    done: dict[int, EncodedRows] = field(init=False, default_factory=dict)
    resumed_shards: frozenset[int] = field(init=False, default=frozenset())  # complete before this call

    def __post_init__(self) -> None:
        self.todo = [r for r in range(len(self.cat)) if r not in self.reuse]

    def open_shards(self) -> None:
        """Discard the work directory's shards if another job left them, else take its complete shards as done."""
        key = job_key(self.fingerprint, self.cat, self.todo, self.batch_size, self.shard_size)
        key.update(encode=asdict(self.enc), texts=_digest([self.texts[r] for r in self.todo]))
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

    def complete(self, k: int, parts: list[EncodedRows]) -> None:
        """Record shard ``k`` from its model batches' outputs, in batch order: written to the work directory
        first, so a kill after this keeps it."""
        rows = EncodedRows.concat(parts, self.model.cfg.embed_dim)
        rows.check()
        if len(rows.errors) != len(self.shard_rows(k)):
            raise RuntimeError(f"shard {k}: {len(rows.errors)} rows encoded for {len(self.shard_rows(k))}")
        self.shards.save(k, rows)
        self.done[k] = rows


def _digest(values: list[str]) -> str:
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()


def job_key(fingerprint: str, cat: pd.DataFrame, todo: list[int], batch_size: int, shard_size: int) -> dict[str, Any]:
    """What a job's shards depend on: the model, how rows are batched, and which files fill each row."""
    sources = source_keys(cat.iloc[todo])
    return {
        "model": fingerprint,
        "batch_size": batch_size,
        "shard_size": shard_size,
        "rows": _digest([list(k) for k in sources]),  # type: ignore[misc]
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


def encode_settings(base: EncodeConfig, overrides: dict[str, Any] | None) -> EncodeConfig:
    """``base`` with ``overrides`` applied (None values ignored), checked: one-line errors for bad values."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    enc = build_config(EncodeConfig, {**asdict(base), **given}, "encode")
    enc.check()
    return enc


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
    encode: dict[str, Any] | None = None,
) -> EncodeJob:
    """Validate the arguments, load the model and catalog, find what a previous bundle or shards already hold.

    ``encode`` overrides fields of the run config's ``encode`` section (segment and text settings)."""
    shard_size = _check_sizes(batch_size, shard_size, index_shards)
    model, cfg = load_model(model_dir, pick_device(device))
    cfg.encode = enc = encode_settings(cfg.encode, encode)  # the bundle's config says what was used
    if index_factory:
        cfg.index.factory = index_factory
    check_factory(cfg.index.factory, model.cfg.embed_dim + (1 if cfg.model.popularity_prior else 0))
    fingerprint = model_fingerprint(model_dir)
    cat = read_catalog(catalog)
    if index_shards > len(cat):
        raise UserError(f"{index_shards} index shards for {len(cat)} videos: use at most one shard per video")
    cat["size"], cat["mtime_ns"] = file_stats(list(cat["abs_path"]))
    out = Path(out).resolve()
    cols = text_columns(cat, enc)
    LOG.info("video text from column(s): %s", ", ".join(cols) if cols else "none (content vectors only)")
    texts = row_texts(cat, cols)
    reuse, prev_ids = previous_bundle(out, fingerprint, cat, texts, asdict(enc), model, rebuild)
    job = EncodeJob(
        Path(model_dir),
        Path(catalog),
        out,
        model=model,
        cfg=cfg,
        fingerprint=fingerprint,
        cat=cat,
        reuse=reuse,
        prev_ids=prev_ids,
        batch_size=batch_size,
        shard_size=shard_size,
        backend=backend,
        index_shards=index_shards,
        enc=enc,
        texts=texts,
        text_known=bool(cols),
    )
    job.open_shards()
    return job
