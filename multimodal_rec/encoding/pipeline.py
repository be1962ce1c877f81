"""``encode_catalog``: plan the job, run an engine (local or Ray) over its missing shards, write the bundle.

The path of a video: catalog row -> :func:`~multimodal_rec.encoding.job.plan_encode` (reuse from a previous bundle
or an interrupted run's shards) -> an engine cuts the rest into segments, decodes and embeds them
(:mod:`~multimodal_rec.encoding.embed`) -> :func:`~multimodal_rec.encoding.finish.finish_encode` combines segments
and text into each video's vectors (:func:`~multimodal_rec.encoding.items.combine`) and writes them with the
indexes into the bundle.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from multimodal_rec.encoding.finish import EncodeResult, finish_encode
from multimodal_rec.encoding.job import plan_encode
from multimodal_rec.encoding.local import run_local
from multimodal_rec.errors import UserError
from multimodal_rec.progress import ProgressFn, no_progress

ENGINES = ("local", "ray")


def default_workers(device: str = "auto") -> int:
    """Decoding processes: on a GPU decoding is the bottleneck (all cores); on a CPU the model shares the
    cores with decoding, and one worker per two cores measured best (``mmrec bench encode``)."""
    cores = os.cpu_count() or 1
    gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return cores if gpu else max(1, cores // 2)


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
    encode: dict[str, Any] | None = None,
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
    ``index_shards`` > 1 splits the index by a stable hash of the video id (search merges the shards); the segment
    index stays one file. ``encode`` overrides fields of the run config's ``encode`` section (``segment_seconds``,
    ``max_segments``, ``text_columns``, ``text_weight``); the bundle records the settings used.
    """
    t0 = time.time()
    if engine not in ENGINES:
        raise UserError(f"unknown encode engine {engine!r}: use one of {', '.join(ENGINES)}")
    if engine == "ray":
        from multimodal_rec.encoding.ray_engine import require_ray

        require_ray()  # before loading anything: a missing extra is a one-line error
        use_gpus, device = device != "cpu", "cpu"  # the driver only assembles the bundle; Ray actors run the model
    job = plan_encode(
        model_dir, catalog, out, batch_size, device, shard_size, rebuild, backend, index_factory, index_shards, encode
    )
    if engine == "ray":
        from multimodal_rec.encoding.ray_engine import run_ray

        run_ray(job, address=ray_address, num_cpus=ray_cpus, use_gpus=use_gpus, progress=progress)
    else:
        run_local(job, workers, progress)
    return finish_encode(job, t0)
