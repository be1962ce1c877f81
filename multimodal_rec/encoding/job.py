"""Offline catalog encoding: catalog -> frames (decord, DataLoader workers) -> video tower -> bundle.

Embeddings are written in shards as they are produced, into a work directory beside the bundle
(``.<bundle>.work/``). A job killed at any moment and started again with the same command continues from
the last complete shard and ends with exactly the embeddings an uninterrupted run gives: shards start on
batch boundaries, so every clip is encoded in the same batch either way. An existing bundle made by the
same model is updated incrementally: unchanged videos keep their embeddings, new or changed ones are
encoded, removed ones are dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from multimodal_rec.bundle import (
    EMBEDDINGS_FILE,
    INDEX_FILE,
    MANIFEST,
    SOURCES_FILE,
    Bundle,
    read_manifest,
    save_bundle,
)
from multimodal_rec.data.cache import frames_to_tensor, iter_clips
from multimodal_rec.data.tables import read_catalog
from multimodal_rec.errors import UserError
from multimodal_rec.index.build import build_index, choose_factory
from multimodal_rec.index.shards import build_sharded_index, shard_file_names
from multimodal_rec.model.checkpoint import load_model, model_fingerprint
from multimodal_rec.model.multimodal import to_numpy
from multimodal_rec.model.prior import COUNTS_FILE, PRIOR_COLUMN, index_vectors, read_counts
from multimodal_rec.progress import ProgressFn, no_progress
from multimodal_rec.runtime import pick_device

LOG = logging.getLogger(__name__)
JOB_FILE = "job.json"


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


def default_workers(device: str = "auto") -> int:
    """Decoding processes: on a GPU decoding is the bottleneck (all cores); on a CPU the model shares the
    cores with decoding, and one worker per two cores measured best (``mmrec bench encode``)."""
    cores = os.cpu_count() or 1
    gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return cores if gpu else max(1, cores // 2)


def _check_factory(factory: str, d: int) -> None:
    """Refuse a bad FAISS factory string before any video is decoded."""
    if factory == "auto":
        return
    import faiss

    try:
        faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except Exception as e:
        msg = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise UserError(f"invalid FAISS index factory {factory!r}: {msg[:160]}") from None


def _file_stats(paths: list[str]) -> tuple[list[int], list[int]]:
    sizes, mtimes = [], []
    for p in paths:
        try:
            st = os.stat(p)
            sizes.append(st.st_size)
            mtimes.append(st.st_mtime_ns)
        except OSError:
            sizes.append(-1)
            mtimes.append(-1)
    return sizes, mtimes


def _previous_bundle(out: Path, fingerprint: str, cat: pd.DataFrame) -> tuple[dict[int, np.ndarray], set[str]]:
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
    key = {
        (v, p, int(s), int(m)): i
        for i, (v, p, s, m) in enumerate(
            zip(prev["video_id"], prev["abs_path"], prev["size"], prev["mtime_ns"], strict=True)
        )
    }
    reuse = {}
    for row, k in enumerate(zip(cat["video_id"], cat["abs_path"], cat["size"], cat["mtime_ns"], strict=True)):
        i = key.get((k[0], k[1], int(k[2]), int(k[3])))
        if i is not None:
            reuse[row] = xb[i]
    return reuse, prev_ids


class ShardWriter:
    """Complete shards of one job in ``work``: ``shard-K.npy`` (embeddings) then ``shard-K.json`` (the marker)."""

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


def encode_videos(
    model: Any,
    paths: list[str],
    batch_size: int = 16,
    workers: int = 0,
    backend: str = "auto",
    lock: AbstractContextManager[Any] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Video-tower embeddings ``[n_ok, D]`` of the clips that decoded (in order), and one error per path ("" = ok).

    The same frame sampling and model call as :func:`encode_catalog`, without shards: for a handful of videos
    added to a loaded bundle (``Recommender.add_videos``). ``lock`` is held around each model call only (a model
    shared with serving threads), not while frames are decoded.
    """
    vcfg = model.cfg.video
    use_amp = model.device.type == "cuda"
    xs: list[np.ndarray] = []
    errors = [""] * len(paths)
    with torch.inference_mode(), torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=use_amp):
        for batch in iter_clips(paths, vcfg.num_frames, vcfg.image_size, workers, batch_size, backend):
            good = [f for _, f, _ in batch if f is not None]
            if good:
                with lock or nullcontext():
                    xs.append(to_numpy(model.encode_video(frames_to_tensor(np.stack(good)))))
            for i, f, err in batch:
                if f is None:
                    errors[i] = err or "unreadable video"
    xb = np.concatenate(xs) if xs else np.zeros((0, model.cfg.embed_dim), np.float32)
    return xb, errors


@dataclass
class EncodeJob:
    """What one encode call must do, shared by the engines: the rows to encode, cut into resumable shards.

    ``todo`` are the catalog rows not reused from a previous bundle; shard ``k`` is ``todo[k * shard_size :
    (k + 1) * shard_size]`` and its model batches are consecutive ``batch_size`` slices of it, so every engine
    puts each clip in the same batch (and gets the same embedding). ``done`` maps a complete shard to its
    embeddings (encoded rows only) and one error per row ("" for encoded rows).
    """

    model_dir: Path
    catalog: Path
    out: Path
    model: Any  # MultimodalModel on the driver: its config, tokenizer and weights go into the bundle
    cfg: Any  # RunConfig
    fingerprint: str
    cat: pd.DataFrame
    reuse: dict[int, np.ndarray]
    prev_ids: set[str]
    todo: list[int]
    batch_size: int
    shard_size: int
    backend: str
    shards: ShardWriter
    done: dict[int, tuple[np.ndarray, list[str]]]
    index_shards: int = 1
    resumed_shards: frozenset[int] = frozenset()  # shards complete before this call (an interrupted run's)

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

    def complete(self, k: int, xb: np.ndarray, errors: list[str]) -> None:
        """Record shard ``k`` as encoded: written to the work directory first, so a kill after this keeps it."""
        self.shards.save(k, xb, errors)
        self.done[k] = (xb, errors)


def embed_clips(model: Any, clips: list[np.ndarray]) -> np.ndarray:
    """Video-tower embeddings ``[n, D]`` of decoded clips (uint8 ``[T, H, W, 3]`` each), one model batch."""
    x = frames_to_tensor(np.stack(clips))
    cuda = model.device.type == "cuda"
    if cuda:
        x = x.pin_memory()  # page-locked: the copy to the GPU overlaps with compute
    with torch.inference_mode(), torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=cuda):
        return to_numpy(model.encode_video(x))


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
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    if index_shards < 1:
        raise UserError(f"index shards must be >= 1, got {index_shards}")
    shard_size = shard_size or 8 * batch_size
    if shard_size % batch_size:
        raise UserError(f"shard size {shard_size} must be a multiple of the batch size {batch_size}")
    model, cfg = load_model(model_dir, pick_device(device))
    if index_factory:
        cfg.index.factory = index_factory
    _check_factory(cfg.index.factory, model.cfg.embed_dim + (1 if cfg.model.popularity_prior else 0))
    fingerprint = model_fingerprint(model_dir)
    cat = read_catalog(catalog)
    if index_shards > len(cat):
        raise UserError(f"{index_shards} index shards for {len(cat)} videos: use at most one shard per video")
    cat["size"], cat["mtime_ns"] = _file_stats(list(cat["abs_path"]))
    out = Path(out).resolve()

    reuse, prev_ids = _previous_bundle(out, fingerprint, cat)
    if rebuild:
        reuse = {}
    todo = [r for r in range(len(cat)) if r not in reuse]
    job_key = {
        "model": fingerprint,
        "batch_size": batch_size,
        "shard_size": shard_size,
        "rows": hashlib.sha256(
            json.dumps(
                [[cat["video_id"][r], cat["abs_path"][r], int(cat["size"][r]), int(cat["mtime_ns"][r])] for r in todo]
            ).encode()
        ).hexdigest(),
    }
    shards = ShardWriter(out.parent / f".{out.name}.work", job_key)
    job = EncodeJob(
        model_dir=Path(model_dir),
        catalog=Path(catalog),
        out=out,
        model=model,
        cfg=cfg,
        fingerprint=fingerprint,
        cat=cat,
        reuse=reuse,
        prev_ids=prev_ids,
        todo=todo,
        batch_size=batch_size,
        shard_size=shard_size,
        backend=backend,
        shards=shards,
        done={},
        index_shards=index_shards,
    )
    job.done = {k: s for k in range(job.n_shards) if (s := shards.load(k)) is not None}
    job.resumed_shards = frozenset(job.done)
    if job.done:
        LOG.info("resuming: %d of %d shards already complete", len(job.done), job.n_shards)
    return job


def run_local(job: EncodeJob, workers: int = 1, progress: ProgressFn = no_progress) -> None:
    """Encode the job's missing shards in this process: DataLoader workers decode, the model runs here."""
    model, cat = job.model, job.cat
    # One loader over the rows of every missing shard; each shard but the last is whole batches, so the
    # batches of a resumed run are the batches of an uninterrupted one.
    missing = job.missing
    rows = [r for k in missing for r in job.shard_rows(k)]
    bar = progress(total=len(job.todo), desc="encode videos", unit="video")
    bar.update(job.resumed)
    vcfg = model.cfg.video
    paths = [cat["abs_path"][r] for r in rows]
    bounds, begin = [], 0  # (shard, first row, end row) in ``rows``
    for k in missing:
        n = len(job.shard_rows(k))
        bounds.append((k, begin, begin + n))
        begin += n
    pos, cur, t0 = 0, 0, time.perf_counter()
    buf_x: list[np.ndarray] = []
    buf_err: list[str] = []
    threads = torch.get_num_threads()
    if model.device.type == "cpu" and workers > 0:  # decoding workers take cores: don't oversubscribe them
        torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 1) - workers)))
    try:
        for batch in iter_clips(paths, vcfg.num_frames, vcfg.image_size, workers, job.batch_size, job.backend):
            good = [f for _, f, _ in batch if f is not None]
            if good:
                buf_x.append(embed_clips(model, good))
            for i, f, err in batch:
                buf_err.append("" if f is not None else err)
                if f is None:
                    LOG.warning("skipped %s: %s", cat["video_id"][rows[i]], err)
            pos += len(batch)
            bar.update(len(batch))
            if pos == bounds[cur][2]:  # a batch never spans two shards: shards are whole batches
                xs = np.concatenate(buf_x) if buf_x else np.zeros((0, model.cfg.embed_dim), np.float32)
                job.complete(bounds[cur][0], xs, buf_err)
                buf_x, buf_err, cur = [], [], cur + 1
    finally:
        bar.close()
        torch.set_num_threads(threads)
    if rows:
        dt = time.perf_counter() - t0
        LOG.info("local engine: %d videos decoded and encoded in %.1f s (%.1f videos/s)", pos, dt, pos / dt)


def finish_encode(job: EncodeJob, t0: float) -> EncodeResult:
    """Assemble the embeddings (previous bundle + shards), write the bundle atomically, drop the work directory."""
    cat, model, cfg = job.cat, job.model, job.cfg
    D = model.cfg.embed_dim
    emb = np.zeros((len(cat), D), np.float32)
    errors = [""] * len(cat)
    for r, x in job.reuse.items():
        emb[r] = x
    for k in range(job.n_shards):
        xs, errs = job.done[k]
        j = 0
        for r, err in zip(job.shard_rows(k), errs, strict=True):
            errors[r] = err
            if not err:
                emb[r] = xs[j]
                j += 1
    ok = np.array([not e for e in errors])
    skipped = [
        {"video_id": v, "path": p, "reason": e}
        for v, p, e, good in zip(cat["video_id"], cat["path"], errors, ok, strict=True)
        if not good
    ]
    if not ok.any():
        first = skipped[0]["reason"] if skipped else "empty catalog"
        raise UserError(f"no video of {job.catalog} could be encoded ({len(skipped)} skipped; first: {first})")
    xb = emb[ok]
    encoded = cat[ok].reset_index(drop=True)
    counts = read_counts(job.model_dir / COUNTS_FILE)
    encoded[PRIOR_COLUMN] = [counts.get(v, 0) for v in encoded["video_id"]]
    removed = len(job.prev_ids - set(cat["video_id"]))
    if job.index_shards > len(xb):
        raise UserError(f"{job.index_shards} index shards for {len(xb)} videos: use at most one shard per video")

    vectors = index_vectors(xb, encoded, cfg.model.popularity_prior)
    fields: dict[str, Any] = {
        "model": cfg.to_dict(),
        "model_fingerprint": job.fingerprint,
        "embed_dim": int(xb.shape[1]),
        "index": cfg.index.factory,
        "catalog_source": str(job.catalog.resolve()),
    }
    if job.index_shards == 1:
        if fields["index"] == "auto":  # recorded as what was chosen for this catalog size
            fields["index"] = choose_factory(len(vectors), vectors.shape[1])
        indexes = {INDEX_FILE: build_index(vectors, fields["index"])}
    else:  # each shard file's checksum is in "files" like every other file
        names = shard_file_names(job.index_shards)
        parts = build_sharded_index(vectors, list(encoded["video_id"]), job.index_shards, cfg.index.factory)
        indexes = dict(zip(names, parts, strict=True))
        fields.update(index_shards=job.index_shards, index_files=names)
    meta = encoded.drop(columns=["size", "mtime_ns"])
    bundle = Bundle(model, cfg, meta, xb, sources=encoded, skipped=skipped, indexes=indexes, fields=fields)
    path = save_bundle(job.out, bundle)
    shutil.rmtree(job.shards.work, ignore_errors=True)  # the bundle holds everything now
    new_rows = [r for k in range(job.n_shards) if k not in job.resumed_shards for r in job.shard_rows(k)]
    n_new = sum(1 for r in new_rows if not errors[r])
    LOG.info(
        "bundle %s: %d videos (%d encoded, %d reused, %d from shards), %d skipped, %d removed",
        path,
        len(xb),
        n_new,
        len(job.reuse),
        job.resumed,
        len(skipped),
        removed,
    )
    return EncodeResult(path, n_new, skipped, time.time() - t0, len(job.reuse), job.resumed, removed, len(xb))


ENGINES = ("local", "ray")


def encode_catalog(
    model_dir: str | Path,
    catalog: str | Path,
    out: str | Path,
    batch_size: int = 32,
    workers: int = 1,
    device: str = "auto",
    shard_size: int | None = None,
    rebuild: bool = False,
    backend: str = "auto",
    index_factory: str | None = None,
    progress: ProgressFn = no_progress,
    engine: str = "local",
    ray_address: str | None = None,
    ray_cpus: int | None = None,
    index_shards: int = 1,
) -> EncodeResult:
    """Encode every video of ``catalog`` with the trained model in ``model_dir`` into the bundle ``out``.

    Unreadable videos are skipped and listed in the bundle's ``skipped.csv``; the job fails only when
    nothing could be encoded. ``shard_size`` (a multiple of ``batch_size``; default 8 batches) sets how
    much work a kill can lose. ``rebuild`` ignores an existing bundle instead of updating it. ``backend``:
    ``auto`` (decord, PyAV for clips decord cannot read), ``decord`` or ``pyav``. ``index_factory``
    overrides the config's FAISS index (``auto`` chooses by catalog size, or a FAISS factory string).
    ``engine="ray"`` runs decoding and the model as a Ray Data pipeline (``ray_address`` or ``RAY_ADDRESS``;
    neither: a local Ray with ``ray_cpus`` CPUs; ``workers`` is then unused; the model runs on the cluster's
    GPUs unless ``device="cpu"``); the bundle is the same.
    ``index_shards`` > 1 splits the index by a stable hash of the video id (search merges the shards).
    """
    t0 = time.time()
    if engine not in ENGINES:
        raise UserError(f"unknown encode engine {engine!r}: use one of {', '.join(ENGINES)}")
    if engine == "ray":
        from multimodal_rec.encoding.ray_engine import require_ray

        require_ray()  # before loading anything: a missing extra is a one-line error
        use_gpus, device = device != "cpu", "cpu"  # the driver only assembles the bundle; Ray actors run the model
    job = plan_encode(
        model_dir, catalog, out, batch_size, device, shard_size, rebuild, backend, index_factory, index_shards
    )
    if engine == "ray":
        from multimodal_rec.encoding.ray_engine import run_ray

        run_ray(job, address=ray_address, num_cpus=ray_cpus, use_gpus=use_gpus, progress=progress)
    else:
        run_local(job, workers, progress)
    return finish_encode(job, t0)
