"""The local engine of ``mmrec encode``: DataLoader workers decode segments, the towers run in this process."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

import torch

from multimodal_rec.encoding.embed import EncodedRows, embed_rows
from multimodal_rec.encoding.job import EncodeJob
from multimodal_rec.progress import Bar, ProgressFn, no_progress

LOG = logging.getLogger(__name__)


def _shard_results(job: EncodeJob, batches: Iterator[EncodedRows], k: int, bar: Bar) -> list[EncodedRows]:
    """The next model batches of ``batches``, one per batch of shard ``k``."""
    parts = []
    for rows in job.shard_batches(k):
        part = next(batches)
        job.warn_skipped(rows, part.errors)  # raises if the batch is not the shard's batch (a different length)
        parts.append(part)
        bar.update(len(rows))
    return parts


def run_local(job: EncodeJob, workers: int = 1, progress: ProgressFn = no_progress) -> None:
    """Encode the job's missing shards in this process; each shard is saved as soon as its batches are in."""
    model, cat, missing = job.model, job.cat, job.missing
    # One loader over the rows of every missing shard; each shard but the job's last is whole batches, so the
    # loader's batches are the shards' batches, and those of a resumed run are those of an uninterrupted one.
    paths = [cat["abs_path"][r] for k in missing for r in job.shard_rows(k)]
    texts = [job.texts[r] for k in missing for r in job.shard_rows(k)]
    bar = progress(total=len(job.todo), desc="encode videos", unit="video")
    bar.update(job.resumed)
    threads, t0 = torch.get_num_threads(), time.perf_counter()
    if model.device.type == "cpu" and workers > 0:  # decoding workers take cores: don't oversubscribe them
        torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 1) - workers)))
    batches = embed_rows(model, paths, texts, job.enc, job.batch_size, workers, job.backend)
    try:
        for k in missing:
            job.complete(k, _shard_results(job, batches, k, bar))
    finally:
        batches.close()  # stops the decoding workers of an interrupted run
        bar.close()
        torch.set_num_threads(threads)
    if paths:
        n, dt = len(paths), time.perf_counter() - t0
        LOG.info("local engine: %d videos decoded and encoded in %.1f s (%.1f videos/s)", n, dt, n / dt)
