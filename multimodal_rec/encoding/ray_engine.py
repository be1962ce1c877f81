"""The Ray engine of ``mmrec encode``: the job of :func:`~multimodal_rec.encoding.local.run_local` as Ray Data.

model batches of catalog rows -> decode (CPU tasks, :class:`multimodal_rec.data.cache.ClipDataset`, the one frame
loader) -> encode (:func:`~multimodal_rec.encoding.embed.embed_clips` in an actor pool holding the model: one actor
per GPU, else CPU actors) -> rows back to this process, which writes each shard as soon as its batches are in
(resumable by shard, like the local engine); then :func:`~multimodal_rec.encoding.finish.finish_encode` writes the
bundle.

Each item of the dataset is one *model batch* (the same ``batch_size`` slices of a shard as the local engine),
so every clip is embedded in the same batch as with the local engine: identical embeddings. Frames and
embeddings travel as raw bytes plus shape (a batch's clip count varies when files are bad; raw bytes need no
ragged-tensor conversion and are exact). On a cluster, video paths and the model directory must be readable
by every node (shared storage) and the package importable there (``runtime_env``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import numpy as np

from multimodal_rec.encoding.embed import embed_clips, split_batch
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


def _decode(item: dict[str, Any], num_frames: int, size: int, backend: str) -> dict[str, Any]:
    """One model batch of paths -> the decoded clips (raw uint8 bytes) and one error per row ("" if decoded)."""
    from multimodal_rec.data.cache import ClipDataset

    dataset = ClipDataset(list(item["paths"]), num_frames, size, backend)
    clips, errors = split_batch([dataset[i] for i in range(len(dataset))])
    frames = np.stack(clips) if clips else np.zeros((0, num_frames, size, size, 3), np.uint8)
    return {
        "shard": int(item["shard"]),
        "batch": int(item["batch"]),
        "frames": frames.tobytes(),
        "n": len(clips),
        "errors": json.dumps(errors),
    }


class _Encoder:
    """Ray Data actor: loads the model once, embeds one decoded model batch per call."""

    def __init__(self, model_dir: str, device: str, threads: int, num_frames: int, size: int) -> None:
        import torch

        from multimodal_rec.model.checkpoint import load_model

        if device == "cpu":
            torch.set_num_threads(threads)
        self.model, _ = load_model(model_dir, device)
        self.shape = (num_frames, size, size, 3)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        embs = []
        for raw, n in zip(batch["frames"], batch["n"], strict=True):
            frames = np.frombuffer(raw, np.uint8).reshape(int(n), *self.shape)  # [n, T, H, W, 3]
            x = embed_clips(self.model, list(frames))
            embs.append(np.ascontiguousarray(x, np.float32).tobytes())
        return {
            "shard": batch["shard"],
            "batch": batch["batch"],
            "emb": np.array(embs, dtype=object),
            "errors": batch["errors"],
        }


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
            items.append({"shard": k, "batch": j, "paths": [str(job.cat["abs_path"][r]) for r in rows]})
    return items, n_batches


def _dataset(ray: Any, job: EncodeJob, items: list[dict[str, Any]], use_gpus: bool) -> Any:
    """The Ray Data pipeline: items -> decode tasks -> encode actors -> rows of (shard, batch, emb, errors)."""
    vcfg = job.model.cfg.video
    actors, cpus, gpus = _pool(ray, use_gpus)
    LOG.info("ray: %d model batches, %d encode actor(s) with %g CPU / %g GPU each", len(items), actors, cpus, gpus)
    # a block per model batch lets decoding start everywhere at once; capped so a huge catalog does not make
    # hundreds of thousands of tiny blocks
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), MAX_BLOCKS))
    ds = ds.map(
        _decode,
        fn_kwargs={"num_frames": vcfg.num_frames, "size": vcfg.image_size, "backend": job.backend},
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
            "num_frames": vcfg.num_frames,
            "size": vcfg.image_size,
        },
    )


def _run(ray: Any, job: EncodeJob, use_gpus: bool, progress: ProgressFn) -> None:
    D = job.model.cfg.embed_dim
    items, n_batches = _items(job)
    bar = progress(total=len(job.todo), desc="encode videos (ray)", unit="video")
    bar.update(job.resumed)
    if not items:
        bar.close()
        return
    ctx = ray.data.DataContext.get_current()
    bars, ctx.enable_progress_bars = ctx.enable_progress_bars, False  # ours counts videos; Ray's print per operator
    pending: dict[int, dict[int, tuple[np.ndarray, list[str]]]] = {k: {} for k in n_batches}
    n, t0 = 0, time.perf_counter()
    try:
        for row in _dataset(ray, job, items, use_gpus).iter_rows():
            k, j = int(row["shard"]), int(row["batch"])
            errors = json.loads(row["errors"])
            pending[k][j] = (np.frombuffer(row["emb"], np.float32).reshape(-1, D), errors)
            job.warn_skipped(job.shard_batches(k)[j], errors)
            bar.update(len(errors))
            n += len(errors)
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
