"""The one decode-and-embed path of the towers, shared by every caller.

Videos are cut into segments and decoded by :mod:`multimodal_rec.data.cache` (the one frame loader); the video tower
runs under inference mode, with bf16 autocast and page-locked host memory on a GPU. The local engine, the Ray
engine's actors and :func:`~multimodal_rec.encoding.items.encode_items` (videos added to a served bundle) all embed a
model batch of catalog rows through :func:`embed_batch`, so a video gets the same vectors whichever path encodes it
(given the same batch).

A batch's result is an :class:`EncodedRows`: per row its error ("" where encoded), its segments' raw video-tower
vectors and spans, and its text vector. These raw parts are what shards store; how they combine into a video's
vectors is :func:`~multimodal_rec.encoding.items.combine`.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from multimodal_rec.data.cache import SegmentDataset, Segments, frames_to_tensor, iter_clips, iter_segments
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


NO_INPUT = "no video file (empty path) and no text"  # a row with nothing to encode


@dataclass
class EncodedRows:
    """Raw encoder outputs of consecutive catalog rows: what a shard stores, what :func:`combine` reads.

    Row ``i`` owns ``nseg[i]`` consecutive rows of ``seg``/``spans`` (0 for a failed row and for a row without a
    video file, served from its text); ``text[i]`` is its text vector when ``has_text[i]``, else zeros.
    """

    errors: list[str]  # one per row, "" where encoded
    nseg: np.ndarray  # [n] int64
    seg: np.ndarray  # [S, D] float32 video-tower vector of each segment
    spans: np.ndarray  # [S, 2] float64 start_s, end_s
    text: np.ndarray  # [n, D] float32
    has_text: np.ndarray  # [n] bool

    @classmethod
    def concat(cls, parts: Sequence[EncodedRows], D: int) -> EncodedRows:
        """The rows of ``parts`` one after the other (no part: zero rows)."""
        z = cls.empty(D)
        ps = [z, *parts]
        return cls(
            [e for p in ps for e in p.errors],
            np.concatenate([p.nseg for p in ps]),
            np.concatenate([p.seg for p in ps]),
            np.concatenate([p.spans for p in ps]),
            np.concatenate([p.text for p in ps]),
            np.concatenate([p.has_text for p in ps]),
        )

    @classmethod
    def empty(cls, D: int) -> EncodedRows:
        f32 = np.float32
        return cls(
            [], np.zeros(0, np.int64), np.zeros((0, D), f32), np.zeros((0, 2)), np.zeros((0, D), f32), np.zeros(0, bool)
        )

    def split(self) -> list[EncodedRows]:
        """One :class:`EncodedRows` per row."""
        starts = np.concatenate([[0], np.cumsum(self.nseg)])
        return [
            EncodedRows(
                [e],
                self.nseg[i : i + 1],
                self.seg[starts[i] : starts[i + 1]],
                self.spans[starts[i] : starts[i + 1]],
                self.text[i : i + 1],
                self.has_text[i : i + 1],
            )
            for i, e in enumerate(self.errors)
        ]

    def check(self) -> None:
        """Refuse parts that do not line up (a shift would give a row its neighbour's vectors)."""
        n = len(self.errors)
        ok = len(self.nseg) == len(self.text) == len(self.has_text) == n and len(self.seg) == len(self.spans)
        if not ok or int(self.nseg.sum()) != len(self.seg) or any(self.nseg[i] for i, e in enumerate(self.errors) if e):
            raise RuntimeError(f"encoded rows do not line up: {n} rows, {len(self.seg)} segments, {self.nseg.sum()}")

    def to_bytes(self) -> bytes:
        """The arrays as an uncompressed ``.npz`` (exact, no pickle): a shard's file, a Ray row's payload."""
        buf = io.BytesIO()
        arrays = {k: getattr(self, k) for k in ("nseg", "seg", "spans", "text", "has_text")}
        np.savez(buf, **arrays, errors=np.array(self.errors, dtype=np.str_).reshape(len(self.errors)))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, raw: bytes) -> EncodedRows:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            errors = [str(e) for e in z["errors"]]
            return cls(errors, z["nseg"], z["seg"], z["spans"], z["text"], z["has_text"])


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


def embed_texts(model: Any, texts: Sequence[str], lock: AbstractContextManager[Any] | None = None) -> np.ndarray:
    """Text-tower vectors ``[n, D]`` of a video's own texts (the numerics of a query: no autocast). The trunk's
    per-string cache is off for the call: a catalog's texts are each seen once, keeping them would only grow."""
    if not len(texts):
        return np.zeros((0, model.cfg.embed_dim), np.float32)
    with lock or nullcontext(), torch.inference_mode():
        cached, model.cache_text_features = model.cache_text_features, False
        try:
            return to_numpy(model.encode_text(list(texts)))
        finally:
            model.cache_text_features = cached


def embed_batch(
    model: Any,
    batch: Sequence[Segments],
    texts: Sequence[str],
    chunk: int,
    lock: AbstractContextManager[Any] | None = None,
) -> EncodedRows:
    """The one per-batch function: decoded rows (:class:`~multimodal_rec.data.cache.SegmentDataset` items) and
    their texts ("" = none) -> :class:`EncodedRows`. Segments go through the video tower ``chunk`` at a time, in
    order (a batch of short clips is one call, as before segments); texts of the encoded rows in one call."""
    D = model.cfg.embed_dim
    errors = [err or UNREADABLE if frames is None else "" for _, frames, _, err in batch]
    for j, (_, frames, _, _) in enumerate(batch):
        if frames is not None and not len(frames) and not texts[j]:
            errors[j] = NO_INPUT
    ok = [j for j, e in enumerate(errors) if not e]
    clips = [clip for j in ok for clip in batch[j][1]]  # type: ignore[union-attr]
    seg = [embed_clips(model, clips[i : i + chunk], lock) for i in range(0, len(clips), chunk)]
    nseg = np.array([len(batch[j][1]) if not errors[j] else 0 for j in range(len(batch))], np.int64)  # type: ignore[arg-type]
    spans = [batch[j][2] for j in ok]
    text = np.zeros((len(batch), D), np.float32)
    has_text = np.array([bool(texts[j]) and not errors[j] for j in range(len(batch))], bool)
    text[has_text] = embed_texts(model, [t for t, h in zip(texts, has_text, strict=True) if h], lock)
    rows = EncodedRows(
        errors,
        nseg,
        np.concatenate([np.zeros((0, D), np.float32), *seg]),
        np.concatenate([np.zeros((0, 2)), *spans]),  # type: ignore[list-item]
        text,
        has_text,
    )
    rows.check()
    return rows


def embed_rows(
    model: Any,
    paths: Sequence[str],
    texts: Sequence[str],
    enc: Any,
    batch_size: int,
    workers: int = 0,
    backend: str = "auto",
    lock: AbstractContextManager[Any] | None = None,
) -> Iterator[EncodedRows]:
    """:class:`EncodedRows` per model batch of ``batch_size`` consecutive rows (``enc``: the EncodeConfig);
    ``workers`` decode ahead of the model."""
    vcfg = model.cfg.video
    cut = (enc.segment_seconds, enc.max_segments, backend, enc.shots)
    data = SegmentDataset(paths, vcfg.num_frames, vcfg.image_size, *cut)
    start = 0
    for batch in iter_segments(data, workers, batch_size):
        yield embed_batch(model, batch, texts[start : start + len(batch)], batch_size, lock)
        start += len(batch)


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

    The video tower alone, one segment per video (the frames and model call of ``mmrec encode`` for a short clip):
    what a bundle made before segments and text vectors holds. Videos added to a current bundle go through
    :func:`~multimodal_rec.encoding.items.encode_items` (segments and text, as the bundle was made). ``lock`` is
    held around each model call only, not while frames are decoded.
    """
    xs: list[np.ndarray] = [np.zeros((0, model.cfg.embed_dim), np.float32)]
    errors: list[str] = []
    for xb, errs in embed_paths(model, paths, batch_size, workers, backend, lock):
        xs.append(xb)
        errors += errs
    return np.concatenate(xs), errors
