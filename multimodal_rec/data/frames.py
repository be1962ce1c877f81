"""The one place that decodes video: T frames sampled uniformly, resized inside the decoder.

``decord`` (from the ``decord2`` package) reads the clip once and returns all sampled frames in one batched
call; no frame-by-frame seeking.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


def read_frames(path: str | Path, num_frames: int, size: int, backend: str = "auto") -> np.ndarray:
    """Decode ``num_frames`` uniformly spaced frames of ``path`` as uint8 ``[T, size, size, 3]`` (RGB).

    ``auto`` uses decord and falls back to PyAV for a clip decord cannot read (decord2 3.4 fails on some
    output widths with "The size must exactly match"); ``decord`` or ``pyav`` force one backend.
    """
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(f"video file not found: {path}")
    if path.stat().st_size == 0:
        raise VideoDecodeError(f"video file is empty: {path}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown decode backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if backend == "pyav":
        return _read_pyav(path, num_frames, size)
    try:
        return _read_decord(path, num_frames, size)
    except VideoDecodeError as e:
        if backend == "decord":
            raise
        LOG.debug("decord failed on %s (%s); trying PyAV", path, e)
        return _read_pyav(path, num_frames, size)


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


def _read_decord(path: Path, num_frames: int, size: int) -> np.ndarray:
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
        try:
            frames = reader.get_batch(sample_indices(n, num_frames).tolist()).asnumpy()  # [T, H, W, 3]
        except bad_file as e:
            raise VideoDecodeError(f"cannot decode frames of {path}: {_first_line(e)}") from None
    finally:
        del reader  # release the demuxer/decoder now, not at some later GC
    return np.ascontiguousarray(frames, dtype=np.uint8)


def _read_pyav(path: Path, num_frames: int, size: int) -> np.ndarray:
    """One sequential pass over the clip; swscale resizes each kept frame.

    When the container states its frame count, only the sampled frames are converted and kept; otherwise
    every frame is kept at the small output size (never at full resolution) and sampled at the end.
    """
    import av

    bad_file = (av.FFmpegError, OSError)  # what PyAV raises for a file it cannot read (InvalidDataError, ...)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"no video stream in {path}")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            declared = int(stream.frames or 0)
            wanted = set(sample_indices(declared, num_frames).tolist()) if declared > 0 else None
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
    if wanted is None or n != declared:  # no or wrong frame count: sample what was actually decoded
        if wanted is not None:  # only the guessed indices were kept; take the nearest kept frame instead
            order = sorted(kept)
            picks = [min(order, key=lambda j: abs(j - i)) for i in sample_indices(n, num_frames)]
        else:
            picks = sample_indices(n, num_frames).tolist()
        return np.stack([kept[i] for i in picks]).astype(np.uint8, copy=False)
    return np.stack([kept[i] for i in sample_indices(n, num_frames)]).astype(np.uint8, copy=False)
