"""The Ray engine of ``mmrec encode``: the job of :func:`~multimodal_rec.encoding.local.run_local` as Ray Data.

model batches of catalog rows -> decode into segments (CPU tasks, :class:`multimodal_rec.data.cache.SegmentDataset`,
the one frame loader) -> encode (:func:`~multimodal_rec.encoding.embed.embed_batch`, the local engine's per-batch
function, in an actor pool holding the model: one actor per GPU, else CPU actors) -> rows back to this process,
which writes each shard as soon as its batches are in
(resumable by shard, like the local engine); then :func:`~multimodal_rec.encoding.finish.finish_encode` writes the
bundle.

Each item of the dataset is one *model batch* (the same ``batch_size`` slices of a shard as the local engine),
so every video is embedded in the same batch as with the local engine: identical vectors. Frames and outputs
travel as uncompressed ``.npz`` bytes (a batch's segment count varies with video lengths and bad files; bytes need
no ragged-tensor conversion and are exact). On a cluster, video paths and the model directory must be readable
by every node (shared storage) and the package importable there (``runtime_env``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from multimodal_rec.data.cache import Segments
from multimodal_rec.encoding.embed import EncodedRows, embed_batch
from multimodal_rec.encoding.job import EncodeJob
from multimodal_rec.errors import InfrastructureError, UserError
from multimodal_rec.progress import ProgressFn, no_progress

LOG = logging.getLogger(__name__)
EXTRA = "pip install -e '.[distributed]'"
MAX_BLOCKS = 10_000


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or a one-line :class:`UserError` naming the extra."""
    try:
        import ray
        import ray.data  # ray without its [data] extra has no Ray Data
    except ImportError as e:
        raise UserError(f"the Ray engine needs ray[data] (missing module {e.name or e}): {EXTRA}") from None
    return ray


def _pack(batch: list[Segments], num_frames: int, size: int) -> bytes:
    """A decoded batch as an uncompressed ``.npz`` (exact, no pickle, no ragged tensors): all segments' frames and
    spans concatenated, each row's segment count (-1: failed) and error."""
    empty = (np.zeros((0, num_frames, size, size, 3), np.uint8), np.zeros((0, 2)))
    buf = io.BytesIO()
    np.savez(
        buf,
        frames=np.concatenate([empty[0], *(f for _, f, _, _ in batch if f is not None)]),
        spans=np.concatenate([empty[1], *(s for _, f, s, _ in batch if f is not None)]),
        nseg=np.array([len(f) if f is not None else -1 for _, f, _, _ in batch], np.int64),
        errors=np.array([e for _, _, _, e in batch], dtype=np.str_).reshape(len(batch)),
    )
    return buf.getvalue()


def _unpack(raw: bytes) -> list[Segments]:
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        frames, spans, nseg, errors = z["frames"], z["spans"], z["nseg"], z["errors"]
    starts = np.concatenate([[0], np.cumsum(np.maximum(nseg, 0))])
    return [
        (i, frames[starts[i] : starts[i + 1]], spans[starts[i] : starts[i + 1]], "")
        if n >= 0
        else (i, None, None, str(errors[i]))
        for i, n in enumerate(nseg.tolist())
    ]


def _decode(item: dict[str, Any], num_frames: int, size: int, backend: str, enc: dict[str, Any]) -> dict[str, Any]:
    """One model batch of paths -> its decoded segments (:func:`_pack`), the rows' texts passed along."""
    from multimodal_rec.data.cache import SegmentDataset

    paths = list(item["paths"])
    cut = (enc["segment_seconds"], enc["max_segments"], backend, bool(enc.get("shots", False)))
    data = SegmentDataset(paths, num_frames, size, *cut)
    return {
        "shard": int(item["shard"]),
        "batch": int(item["batch"]),
        "decoded": _pack([data[i] for i in range(len(data))], num_frames, size),
        "texts": json.dumps(list(item["texts"])),
    }


class _Encoder:
    """Ray Data actor: loads the model once, embeds one decoded model batch per call (:func:`embed_batch`)."""

    def __init__(self, model_dir: str, device: str, threads: int, chunk: int) -> None:
        import torch

        from multimodal_rec.model.checkpoint import load_model

        if device == "cpu":
            torch.set_num_threads(threads)
        self.model, _ = load_model(model_dir, device)
        self.chunk = chunk

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = []
        for raw, texts in zip(batch["decoded"], batch["texts"], strict=True):
            rows = embed_batch(self.model, _unpack(raw), json.loads(texts), self.chunk)
            out.append(rows.to_bytes())
        return {"shard": batch["shard"], "batch": batch["batch"], "rows": np.array(out, dtype=object)}


def _pool(ray: Any, use_gpus: bool = True) -> tuple[int, float, float]:
    """(actors, CPUs per actor, GPUs per actor): one actor per GPU; without GPUs one actor per 8 CPUs holding half
    of the CPUs for the model and leaving the rest to decoding (the split ``mmrec bench encode`` measured best)."""
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)) if use_gpus else 0, int(res.get("CPU", 1))
    if gpus > 0:
        return gpus, 1.0, 1.0
    actors = max(1, cpus // 8)
    return actors, float(max(1, cpus // 2 // actors)), 0.0


def run_ray(
    job: EncodeJob,
    address: str | None = None,
    num_cpus: int | None = None,
    use_gpus: bool = True,
    progress: ProgressFn = no_progress,
) -> None:
    """Encode the job's missing shards with Ray Data; each complete shard is saved as soon as it is in.

    Uses the running Ray session if there is one; else connects to ``address`` (or ``RAY_ADDRESS``), else starts
    a local Ray with ``num_cpus`` CPUs (default: all) and stops it at the end. The model runs on the cluster's
    GPUs when it has some, unless ``use_gpus`` is False.
    """
    ray = require_ray()
    started, t0 = False, time.perf_counter()
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, logging_level=logging.WARNING)
        started = True
        LOG.info("ray: started in %.1f s, resources %s", time.perf_counter() - t0, ray.cluster_resources())
    try:
        _run(ray, job, use_gpus, progress)
    finally:
        if started:
            ray.shutdown()


def _items(job: EncodeJob) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """One dataset item per model batch of the missing shards, and the number of batches of each missing shard."""
    items, n_batches = [], {}
    for k in job.missing:
        batches = job.shard_batches(k)
        n_batches[k] = len(batches)
        for j, rows in enumerate(batches):
            paths = [str(job.cat["abs_path"][r]) for r in rows]
            items.append({"shard": k, "batch": j, "paths": paths, "texts": [job.texts[r] for r in rows]})
    return items, n_batches


def _dataset(ray: Any, job: EncodeJob, items: list[dict[str, Any]], use_gpus: bool) -> Any:
    """The Ray Data pipeline: items -> decode tasks -> encode actors -> rows of (shard, batch, encoded rows)."""
    vcfg = job.model.cfg.video
    actors, cpus, gpus = _pool(ray, use_gpus)
    LOG.info("ray: %d model batches, %d encode actor(s) with %g CPU / %g GPU each", len(items), actors, cpus, gpus)
    # a block per model batch lets decoding start everywhere at once; capped so a huge catalog does not make
    # hundreds of thousands of tiny blocks
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), MAX_BLOCKS))
    ds = ds.map(
        _decode,
        fn_kwargs={
            "num_frames": vcfg.num_frames,
            "size": vcfg.image_size,
            "backend": job.backend,
            "enc": asdict(job.enc),
        },
        num_cpus=1,
        # Memory a decode task holds (a batch of frames and the decoders' buffers, 4x as a margin) so Ray does
        # not start more of them than a node holds. Resources unlike the actors' also keep Ray Data from
        # fusing decoding into the encode actors: decoding stays in CPU tasks running beside the model.
        memory=float(max(64 << 20, 4 * job.batch_size * vcfg.num_frames * vcfg.image_size**2 * 3)),
    )
    return ds.map_batches(
        _Encoder,
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus,
        num_gpus=gpus,
        fn_constructor_kwargs={
            "model_dir": str(job.model_dir.resolve()),
            "device": "cuda" if gpus else "cpu",
            "threads": int(cpus),
            "chunk": job.batch_size,
        },
    )


def _run(ray: Any, job: EncodeJob, use_gpus: bool, progress: ProgressFn) -> None:
    items, n_batches = _items(job)
    bar = progress(total=len(job.todo), desc="encode videos (ray)", unit="video")
    bar.update(job.resumed)
    if not items:
        bar.close()
        return
    ctx = ray.data.DataContext.get_current()
    bars, ctx.enable_progress_bars = ctx.enable_progress_bars, False  # ours counts videos; Ray's print per operator
    pending: dict[int, dict[int, EncodedRows]] = {k: {} for k in n_batches}
    n, t0 = 0, time.perf_counter()
    try:
        for row in _dataset(ray, job, items, use_gpus).iter_rows():
            k, j = int(row["shard"]), int(row["batch"])
            pending[k][j] = rows = EncodedRows.from_bytes(row["rows"])
            job.warn_skipped(job.shard_batches(k)[j], rows.errors)
            bar.update(len(rows.errors))
            n += len(rows.errors)
            if len(pending[k]) == n_batches[k]:  # the shard is complete: save it now (resumable by shard)
                job.complete(k, [pending[k][b] for b in range(n_batches[k])])
                del pending[k]
    finally:
        bar.close()
        ctx.enable_progress_bars = bars
    dt = time.perf_counter() - t0
    LOG.info("ray engine: %d videos decoded and encoded in %.1f s (%.1f videos/s)", n, dt, n / dt)
    if pending:
        raise InfrastructureError(
            f"the Ray pipeline ended with {len(pending)} shard(s) incomplete; run the command again"
        )
