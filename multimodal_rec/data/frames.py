"""The one place that decodes video: T frames sampled uniformly, resized inside the decoder; a long video cut into
segments (equal windows, :func:`segment_spans`) gets T frames per segment from the same single pass.

``decord`` (from the ``decord2`` package) reads the clip once and returns all sampled frames in one batched
call; no frame-by-frame seeking.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from multimodal_rec.errors import UserError

LOG = logging.getLogger(__name__)
QUIET_ENV = "MMREC_QUIET_DECODERS"  # "1": no ffmpeg/decord messages on stderr (`mmrec --quiet`; workers inherit it)


class VideoDecodeError(UserError):
    """A clip that cannot be decoded: missing, empty, not a video, or without frames."""


def sample_indices(num_available: int, num_frames: int) -> np.ndarray:
    """Uniform segment sampling: the centre frame of each of ``num_frames`` equal segments.

    Short clips repeat frames, so every clip yields exactly ``num_frames`` indices in time order.
    """
    if num_available < 1:
        raise ValueError("a clip needs at least one frame")
    if num_frames < 1:
        raise ValueError("num_frames must be >= 1")
    idx = np.floor((np.arange(num_frames) + 0.5) * num_available / num_frames).astype(np.int64)
    return np.clip(idx, 0, num_available - 1)


BACKENDS = ("auto", "decord", "pyav")
Picker = Callable[[int, float], np.ndarray]  # (frame count, fps) -> the frame indices to decode, in order


def segment_spans(
    n_frames: int, fps: float, segment_seconds: float, max_segments: int, cuts: Sequence[int] = ()
) -> list[tuple[int, int]]:
    """Frame ranges ``[start, end)`` of a video's segments, covering all ``n_frames``.

    Without ``cuts``: ``n = max(1, round(duration / segment_seconds))`` equal windows, at most ``max_segments``
    (then each is longer: the whole video stays covered) and at most one per frame. With ``cuts`` (the frames where
    shots start, :mod:`~multimodal_rec.data.shots`) each shot is cut the same way on its own, so no window straddles
    a cut; when that gives more than ``max_segments`` windows, the ``max_segments`` equal windows' boundaries move to
    the nearest cut instead. A video no longer than ``segment_seconds`` stays one window (a short clip is unchanged).
    ``segment_seconds <= 0`` or an unknown frame rate: one window per shot (no cuts: the whole video, the frames of
    :func:`sample_indices`, as before segments existed).
    """
    if n_frames < 1:
        raise ValueError("a clip needs at least one frame")
    plain = _windows(0, n_frames, fps, segment_seconds, max_segments)
    inner = sorted({c for c in cuts if 0 < c < n_frames})
    if not inner or not _longer_than(n_frames, fps, segment_seconds):
        return plain
    bounds = [0, *inner, n_frames]
    spans = [w for a, b in itertools.pairwise(bounds) for w in _windows(a, b, fps, segment_seconds)]
    if len(spans) <= max_segments:
        return spans
    snapped = {min(inner, key=lambda c: abs(c - b)) for _, b in plain[:-1]}  # equal windows, ends moved to cuts
    return list(itertools.pairwise(sorted({0, n_frames, *snapped})))


def _longer_than(n_frames: int, fps: float, segment_seconds: float) -> bool:
    """Whether a video is longer than one window (``segment_seconds <= 0``: always; unknown frame rate: never)."""
    if segment_seconds <= 0:
        return True
    return math.isfinite(fps) and fps > 0 and n_frames / fps > segment_seconds


def _windows(a: int, b: int, fps: float, segment_seconds: float, cap: int | None = None) -> list[tuple[int, int]]:
    """Equal windows of about ``segment_seconds`` over frames ``[a, b)`` (at most ``cap``, at most one per frame)."""
    n = 1
    if segment_seconds > 0 and math.isfinite(fps) and fps > 0:
        n = max(1, math.floor((b - a) / fps / segment_seconds + 0.5))
    n = max(1, min(n, cap or n, b - a))
    return list(itertools.pairwise([a + round(k * (b - a) / n) for k in range(n + 1)]))


def segment_indices(spans: list[tuple[int, int]], num_frames: int) -> np.ndarray:
    """``num_frames`` indices per span (:func:`sample_indices` offset to the window), all spans in order: ``[S*T]``."""
    return np.concatenate([start + sample_indices(end - start, num_frames) for start, end in spans])


def _check(path: Path, backend: str) -> None:
    if not path.is_file():
        raise VideoDecodeError(f"video file not found: {path}")
    if path.stat().st_size == 0:
        raise VideoDecodeError(f"video file is empty: {path}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown decode backend {backend!r}: use one of {', '.join(BACKENDS)}")


def _decode(path: Path, size: int, pick: Picker, backend: str) -> tuple[np.ndarray, int, float]:
    """``(frames [len(pick(n, fps)), size, size, 3], n, fps)`` by the chosen backend (``auto``: PyAV where decord
    fails)."""
    _check(path, backend)
    if backend == "pyav":
        return _read_pyav(path, size, pick)
    try:
        return _read_decord(path, size, pick)
    except VideoDecodeError as e:
        if backend == "decord":
            raise
        LOG.debug("decord failed on %s (%s); trying PyAV", path, e)
        return _read_pyav(path, size, pick)


def read_frames(path: str | Path, num_frames: int, size: int, backend: str = "auto") -> np.ndarray:
    """Decode ``num_frames`` uniformly spaced frames of ``path`` as uint8 ``[T, size, size, 3]`` (RGB).

    ``auto`` uses decord and falls back to PyAV for a clip decord cannot read (decord2 3.4 fails on some
    output widths with "The size must exactly match"); ``decord`` or ``pyav`` force one backend.
    """
    return _decode(Path(path), size, lambda n, _fps: sample_indices(n, num_frames), backend)[0]


def read_span(
    path: str | Path, num_frames: int, size: int, start_s: float, end_s: float, backend: str = "auto"
) -> np.ndarray:
    """``num_frames`` frames sampled uniformly inside ``[start_s, end_s)`` of ``path`` (a moment), uint8
    ``[T, size, size, 3]``; an unknown frame rate or an empty span samples the whole video."""

    def pick(n: int, fps: float) -> np.ndarray:
        if not (math.isfinite(fps) and fps > 0):
            return sample_indices(n, num_frames)
        a = min(max(0, math.floor(start_s * fps + 0.5)), n - 1)
        b = min(n, max(a + 1, math.floor(end_s * fps + 0.5)))
        return a + sample_indices(b - a, num_frames)

    return _decode(Path(path), size, pick, backend)[0]


def read_segments(
    path: str | Path,
    num_frames: int,
    size: int,
    segment_seconds: float,
    max_segments: int,
    backend: str = "auto",
    shots: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """A video cut into segments (:func:`segment_spans`): frames uint8 ``[S, T, size, size, 3]`` and the spans
    ``[S, 2]`` (start_s, end_s). All segments' frames come from one pass (decord: one batched call).

    A short clip is one segment holding exactly the frames of :func:`read_frames`. Without a usable frame rate the
    video is one segment with the span (0, 0). ``shots``: cut at the video's shot boundaries first (one more pass
    over the file, :func:`~multimodal_rec.data.shots.detect_cuts`).
    """
    cuts: list[int] = []

    def pick(n: int, fps: float) -> np.ndarray:
        if shots and _longer_than(n, fps, segment_seconds):
            from multimodal_rec.data.shots import detect_cuts

            cuts.extend(detect_cuts(path))  # only for a video longer than one window: a short clip costs nothing
        return segment_indices(segment_spans(n, fps, segment_seconds, max_segments, cuts), num_frames)

    frames, n, fps = _decode(Path(path), size, pick, backend)
    windows = segment_spans(n, fps, segment_seconds, max_segments, cuts)  # the windows pick() sampled
    known = math.isfinite(fps) and fps > 0
    spans = np.array([(a / fps, b / fps) if known else (0.0, 0.0) for a, b in windows], np.float64)
    return frames.reshape(len(windows), num_frames, size, size, 3), spans


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:200]


@contextmanager
def _native_stderr_muted(mute: bool) -> Iterator[None]:
    """Point file descriptor 2 at /dev/null while decord opens a clip: its C++ log prints "ERROR opening ..." there
    (no level controls it) and the failure is reported anyway, as a VideoDecodeError."""
    if not mute:
        yield
        return
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _read_decord(path: Path, size: int, pick: Picker) -> tuple[np.ndarray, int, float]:
    import decord

    quiet = os.environ.get(QUIET_ENV) == "1"
    if quiet:
        decord.logging.set_level(decord.logging.QUIET)  # ffmpeg's own messages (PyAV drops them by default)

    # what decord raises for a file it cannot read: RuntimeError ("Error reading ...") when opening, DECORDError (a
    # failed C++ check: corrupt packets, an output size it cannot produce) or DECORDLimitReachedError (too many corrupt
    # frames) when decoding; anything else propagates
    bad_file = (RuntimeError, decord.DECORDError, decord.DECORDLimitReachedError)
    try:
        with _native_stderr_muted(quiet):
            reader = decord.VideoReader(str(path), ctx=decord.cpu(0), width=size, height=size, num_threads=1)
    except bad_file as e:  # multi-line C++ messages: keep the first line
        raise VideoDecodeError(f"cannot decode video {path}: {_first_line(e)}") from None
    try:
        n = len(reader)
        if n < 1:
            raise VideoDecodeError(f"video has no frames: {path}")
        fps = float(reader.get_avg_fps())
        try:
            frames = reader.get_batch(pick(n, fps).tolist()).asnumpy()  # [T, H, W, 3] (segments: [S*T, ...])
        except bad_file as e:
            raise VideoDecodeError(f"cannot decode frames of {path}: {_first_line(e)}") from None
    finally:
        del reader  # release the demuxer/decoder now, not at some later GC
    return np.ascontiguousarray(frames, dtype=np.uint8), n, fps


KEEP_ALL_FRAMES = 3000  # PyAV without a declared frame count: above this many estimated frames, keep only the
# frames the estimate picks (a long film kept whole, even small, would not fit in memory)


def _stream_facts(stream: Any, container: Any) -> tuple[int, float, int]:
    """(declared frame count or 0, frame rate or NaN, frames estimated from the duration or 0) of a PyAV stream."""
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else math.nan
    seconds = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0
    seconds = seconds or (container.duration or 0) / 1e6
    estimate = round(seconds * fps) if math.isfinite(fps) else 0
    return int(stream.frames or 0), fps, estimate


def _nearest(kept: dict[int, np.ndarray], wanted: np.ndarray) -> list[int]:
    """For each wanted index the nearest kept one (the earlier on a tie)."""
    order = sorted(kept)
    out = []
    for i in wanted.tolist():
        pos = bisect.bisect_left(order, i)
        out.append(min(order[max(0, pos - 1) : pos + 1], key=lambda j: abs(j - i)))
    return out


def _read_pyav(path: Path, size: int, pick: Picker) -> tuple[np.ndarray, int, float]:
    """One sequential pass over the clip; swscale resizes each kept frame.

    When the container states its frame count (or a long one's duration estimates it), only the picked frames are
    converted and kept; otherwise every frame is kept at the small output size (never at full resolution) and
    picked at the end.
    """
    import av

    bad_file = (av.FFmpegError, OSError)  # what PyAV raises for a file it cannot read (InvalidDataError, ...)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"no video stream in {path}")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            declared, fps, estimate = _stream_facts(stream, container)
            guess = declared or (estimate if estimate > KEEP_ALL_FRAMES else 0)
            wanted = set(pick(guess, fps).tolist()) if guess > 0 else None
            kept: dict[int, np.ndarray] = {}
            n = 0
            for frame in container.decode(stream):
                if wanted is None or n in wanted:
                    kept[n] = frame.to_ndarray(format="rgb24", width=size, height=size)
                n += 1
            if n == 0:
                raise VideoDecodeError(f"video has no frames: {path}")
    except bad_file as e:
        raise VideoDecodeError(f"cannot decode video {path}: {_first_line(e)}") from None
    picks = pick(n, fps)
    if wanted is not None and n != guess:  # a wrong frame count: only the guessed indices were kept; the nearest
        picks = np.array(_nearest(kept, picks))
    return np.stack([kept[i] for i in picks.tolist()]).astype(np.uint8, copy=False), n, fps
