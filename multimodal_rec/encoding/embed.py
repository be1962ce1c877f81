"""The one decode-and-embed path of the video tower, shared by every caller.

Frames are sampled and decoded by :mod:`multimodal_rec.data.cache` (the one frame loader); the model runs under
inference mode, with bf16 autocast and page-locked host memory on a GPU. The local engine, the Ray engine's actors
and :func:`encode_videos` (videos added to a served bundle) all embed through :func:`embed_clips`, so a clip gets
the same embedding whichever path encodes it (given the same model batch).

Every batch result is ``(xb, errors)``: the embeddings ``[n_ok, D]`` of the clips that decoded, in order, and one
error per clip ("" where it decoded). The ``i``-th "" in ``errors`` owns row ``i`` of ``xb``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import numpy as np
import torch

from multimodal_rec.data.cache import frames_to_tensor, iter_clips
from multimodal_rec.model.multimodal import to_numpy

LOG = logging.getLogger(__name__)
UNREADABLE = "unreadable video"  # the reason recorded when a decoder failed without a message

DecodedBatch = list[tuple[int, np.ndarray | None, str]]  # what iter_clips yields: (index, frames | None, error)


@contextmanager
def inference(model: Any) -> Iterator[None]:
    """Inference mode, with bf16 autocast on a GPU: the numerics of every video embedding."""
    cuda = model.device.type == "cuda"
    with torch.inference_mode(), torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=cuda):
        yield


def split_batch(batch: DecodedBatch) -> tuple[list[np.ndarray], list[str]]:
    """A decoded batch -> (the clips that decoded, in order; one error per clip, "" where it decoded).

    A failed clip's error is never empty: "" marks an embedded row, so an empty reason would shift every later row.
    """
    clips = [f for _, f, _ in batch if f is not None]
    return clips, ["" if f is not None else (err or UNREADABLE) for _, f, err in batch]


def embed_clips(model: Any, clips: Sequence[np.ndarray], lock: AbstractContextManager[Any] | None = None) -> np.ndarray:
    """Video-tower embeddings ``[n, D]`` of decoded clips (uint8 ``[T, H, W, 3]`` each), one model batch.

    ``lock`` is held around the model call only (a model shared with serving threads). No clip: ``[0, D]``.
    """
    if not len(clips):
        return np.zeros((0, model.cfg.embed_dim), np.float32)
    x = frames_to_tensor(np.stack(clips))  # [B, T, 3, H, W] uint8
    if model.device.type == "cuda":
        x = x.pin_memory()  # page-locked: the copy to the GPU overlaps with compute
    with lock or nullcontext(), inference(model):
        return to_numpy(model.encode_video(x))


def embed_paths(
    model: Any,
    paths: Sequence[str],
    batch_size: int,
    workers: int = 0,
    backend: str = "auto",
    lock: AbstractContextManager[Any] | None = None,
) -> Iterator[tuple[np.ndarray, list[str]]]:
    """``(xb, errors)`` per model batch of ``batch_size`` consecutive paths; ``workers`` decode ahead of the model."""
    vcfg = model.cfg.video
    for batch in iter_clips(paths, vcfg.num_frames, vcfg.image_size, workers, batch_size, backend):
        clips, errors = split_batch(batch)
        yield embed_clips(model, clips, lock), errors


def encode_videos(
    model: Any,
    paths: list[str],
    batch_size: int = 16,
    workers: int = 0,
    backend: str = "auto",
    lock: AbstractContextManager[Any] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Video-tower embeddings ``[n_ok, D]`` of the clips that decoded (in order), and one error per path ("" = ok).

    The same frame sampling and model call as :func:`~multimodal_rec.encoding.pipeline.encode_catalog`, without
    shards: for a handful of videos added to a loaded bundle (``Recommender.add_videos``). ``lock`` is held around
    each model call only, not while frames are decoded.
    """
    xs: list[np.ndarray] = [np.zeros((0, model.cfg.embed_dim), np.float32)]
    errors: list[str] = []
    for xb, errs in embed_paths(model, paths, batch_size, workers, backend, lock):
        xs.append(xb)
        errors += errs
    return np.concatenate(xs), errors
