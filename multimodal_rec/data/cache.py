"""Decoded-frame cache: every clip decoded once into a uint8 memory-mapped array reused by every epoch."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from multimodal_rec.data.frames import VideoDecodeError, read_frames, read_segments
from multimodal_rec.progress import ProgressFn, no_progress

LOG = logging.getLogger(__name__)


class ClipDataset(Dataset):
    """Decodes clip ``i`` in a DataLoader worker; a bad file yields an error string instead of frames.

    Only a file that cannot be read or decoded is a skipped clip (:class:`VideoDecodeError`, ``OSError``); any other
    exception is a bug or a broken environment and propagates, so it stops the job instead of skipping every clip.
    """

    def __init__(self, paths: Sequence[str], num_frames: int, size: int, backend: str = "auto") -> None:
        self.paths, self.num_frames, self.size, self.backend = list(paths), num_frames, size, backend

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str]:
        try:
            return i, read_frames(self.paths[i], self.num_frames, self.size, self.backend), ""
        except (VideoDecodeError, OSError) as e:  # a bad file must never stop the job: report it and go on
            return i, None, str(e).splitlines()[0] if str(e) else type(e).__name__


def _collate(batch: list[Any]) -> list[Any]:
    return batch


def iter_clips(
    paths: Sequence[str], num_frames: int, size: int, workers: int = 0, batch_size: int = 16, backend: str = "auto"
) -> Iterable[list[tuple[int, np.ndarray | None, str]]]:
    """Batches of ``(index, frames [T, H, W, 3] | None, error)``; decoding overlaps the consumer via workers."""
    loader = DataLoader(
        ClipDataset(paths, num_frames, size, backend),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )
    yield from loader


Segments = tuple[int, np.ndarray | None, np.ndarray | None, str]  # (index, frames [S, T, H, W, 3], spans [S, 2], error)


class SegmentDataset(Dataset):
    """Decodes video ``i`` cut into segments (:func:`~multimodal_rec.data.frames.read_segments`) in a DataLoader
    worker. A bad file yields an error string instead of frames, as in :class:`ClipDataset`; an empty path (a
    catalog row served from its text alone) yields zero segments and no error."""

    def __init__(
        self,
        paths: Sequence[str],
        num_frames: int,
        size: int,
        segment_seconds: float,
        max_segments: int,
        backend: str = "auto",
        shots: bool = False,
    ) -> None:
        self.paths, self.num_frames, self.size, self.backend = list(paths), num_frames, size, backend
        self.segment_seconds, self.max_segments, self.shots = segment_seconds, max_segments, shots

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Segments:
        if not self.paths[i]:
            T, s = self.num_frames, self.size
            return i, np.zeros((0, T, s, s, 3), np.uint8), np.zeros((0, 2), np.float64), ""
        try:
            frames, spans = read_segments(
                self.paths[i],
                self.num_frames,
                self.size,
                self.segment_seconds,
                self.max_segments,
                self.backend,
                self.shots,
            )
            return i, frames, spans, ""
        except (VideoDecodeError, OSError) as e:  # a bad file must never stop the job: report it and go on
            return i, None, None, str(e).splitlines()[0] if str(e) else type(e).__name__


def iter_segments(dataset: SegmentDataset, workers: int = 0, batch_size: int = 16) -> Iterable[list[Segments]]:
    """Batches of ``batch_size`` consecutive videos' :data:`Segments`; decoding overlaps the consumer via workers."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        persistent_workers=False,
        prefetch_factor=2 if workers > 0 else None,  # a batch of long videos is large: fewer batches ahead
    )
    yield from loader


def _cache_key(paths: Sequence[str], num_frames: int, size: int) -> str:
    h = hashlib.sha256(json.dumps([num_frames, size]).encode())
    for p in paths:
        st = os.stat(p) if os.path.exists(p) else None
        h.update(f"{p}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}\n".encode())
    return h.hexdigest()[:16]


def build_frame_cache(
    paths: Sequence[str],
    num_frames: int,
    size: int,
    cache_dir: str | Path,
    workers: int = 0,
    progress: ProgressFn = no_progress,
    backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``[N, T, H, W, 3]`` uint8 (memory-mapped) and a bool ``[N]`` of clips that decoded.

    The cache file is keyed by the paths, their sizes and mtimes, T and the frame size, and written to a
    temporary name then renamed, so an interrupted build never leaves a cache that looks complete.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = _cache_key(paths, num_frames, size)
    arr_path, ok_path = cache_dir / f"frames-{key}.npy", cache_dir / f"frames-{key}.ok.npy"
    if arr_path.exists() and ok_path.exists():
        LOG.info("frame cache hit: %s", arr_path)
        return np.load(arr_path, mmap_mode="r"), np.load(ok_path)
    N = len(paths)
    tmp = cache_dir / f".frames-{key}.{os.getpid()}.tmp.npy"
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(N, num_frames, size, size, 3))
    ok = np.zeros(N, dtype=bool)
    bar = progress(total=N, desc="decode frames", unit="video")
    for batch in iter_clips(paths, num_frames, size, workers, backend=backend):
        bar.update(len(batch))
        for i, frames, err in batch:
            if frames is None:
                LOG.warning("skipped: %s", err)
                continue
            arr[i] = frames
            ok[i] = True
    bar.close()
    arr.flush()
    del arr
    tmp.replace(arr_path)
    np.save(ok_path, ok)
    return np.load(arr_path, mmap_mode="r"), ok


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[B, T, H, W, 3]`` -> uint8 tensor ``[B, T, 3, H, W]`` (the towers' layout)."""
    return torch.from_numpy(np.array(frames, dtype=np.uint8, copy=True)).permute(0, 1, 4, 2, 3)
