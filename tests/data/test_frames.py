"""Frame sampling and decoding on real mp4 files written by the generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from multimodal_rec.data.cache import iter_clips
from multimodal_rec.data.frames import VideoDecodeError, read_frames, sample_indices


def test_sample_indices_long_clip_is_uniform_and_ordered() -> None:
    idx = sample_indices(100, 4)
    assert idx.tolist() == [12, 37, 62, 87]


def test_sample_indices_short_clip_repeats_frames() -> None:
    idx = sample_indices(3, 8)
    assert len(idx) == 8 and idx.min() == 0 and idx.max() == 2
    assert np.all(np.diff(idx) >= 0)


def test_sample_indices_rejects_empty() -> None:
    with pytest.raises(ValueError):
        sample_indices(0, 4)


@pytest.mark.parametrize("backend", ["auto", "decord", "pyav"])
def test_read_frames_on_generated_clip(world: Path, backend: str) -> None:
    cat = pd.read_csv(world / "catalog.csv")
    row = cat.iloc[0]
    frames = read_frames(world / row["path"], 8, 64, backend=backend)
    assert frames.shape == (8, 64, 64, 3) and frames.dtype == np.uint8
    assert frames.std() > 1, "decoded frames are blank"


def test_backends_agree(world: Path) -> None:
    path = world / pd.read_csv(world / "catalog.csv").iloc[1]["path"]
    a = read_frames(path, 4, 64, backend="decord").astype(int)
    b = read_frames(path, 4, 64, backend="pyav").astype(int)
    assert np.abs(a - b).mean() < 12  # same frames; the two scalers interpolate a little differently


def test_moving_object_moves_in_decoded_frames(world: Path) -> None:
    """Sampled frames are in time order: a clip labelled 'left' has its bright mass drift left."""
    cat = pd.read_csv(world / "catalog.csv")
    row = cat[cat["motion"] == "left"].iloc[0]
    frames = read_frames(world / row["path"], 8, 64).astype(float)
    diff = np.abs(frames - np.median(frames, axis=0)).sum(-1)  # [T, H, W] where the object is
    xs = [np.average(np.arange(64), weights=d.sum(0) + 1e-9) for d in diff]
    assert xs[-1] < xs[0]


def test_bad_files_raise_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(VideoDecodeError, match="not found"):
        read_frames(tmp_path / "missing.mp4", 4, 64)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoDecodeError, match="empty"):
        read_frames(empty, 4, 64)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(VideoDecodeError) as e:
        read_frames(junk, 4, 64)
    assert "\n" not in str(e.value)


def _clips(paths: list[Path], backend: str = "auto") -> list[tuple[int, np.ndarray | None, str]]:
    return [item for batch in iter_clips([str(p) for p in paths], 4, 32, backend=backend) for item in batch]


def test_unreadable_clips_are_skipped_with_a_reason(world: Path, tmp_path: Path) -> None:
    good = world / pd.read_csv(world / "catalog.csv").iloc[0]["path"]
    junk, empty = tmp_path / "junk.mp4", tmp_path / "empty.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.mp4"  # the container is intact, the coded frames are noise
    data = bytearray(good.read_bytes())
    for i in range(len(data) // 4, len(data) * 3 // 4, 7):
        data[i] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    got = _clips([good, junk, tmp_path / "missing.mp4", empty, tmp_path, corrupt])
    assert [i for i, _, _ in got] == [0, 1, 2, 3, 4, 5]
    assert got[0][1] is not None and got[0][1].shape == (4, 32, 32, 3) and got[0][2] == ""
    for i, frames, err in got[1:5]:
        assert frames is None and err and "\n" not in err, (i, err)
    assert got[5][1] is not None or got[5][2]  # FFmpeg may conceal the damage or refuse the clip: never a crash


@pytest.mark.parametrize("backend", ["auto", "decord", "pyav"])
def test_a_bug_inside_decoding_is_not_a_skipped_clip(
    world: Path, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A programming error (here a TypeError from the decoder call) stops the job instead of skipping every clip."""
    import av
    import decord

    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("unexpected keyword argument 'widht'")

    monkeypatch.setattr(decord, "VideoReader", broken)
    monkeypatch.setattr(av, "open", broken)
    good = world / pd.read_csv(world / "catalog.csv").iloc[0]["path"]
    with pytest.raises(TypeError, match="widht"):
        _clips([good], backend=backend)
