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


# --- segments (issue 14) ---------------------------------------------------------------------------------------
def test_a_short_clip_is_one_segment_sampling_todays_frames() -> None:
    from multimodal_rec.data.frames import segment_indices, segment_spans

    for n, fps in ((10, 10.0), (30, 25.0), (170, 25.0)):  # 1 s, 1.2 s, 6.8 s (rounds to one 5 s window)
        spans = segment_spans(n, fps, 5.0, 64)
        assert spans == [(0, n)]
        assert segment_indices(spans, 8).tolist() == sample_indices(n, 8).tolist()


def test_a_long_video_gets_equal_windows_covering_it() -> None:
    from multimodal_rec.data.frames import segment_spans

    spans = segment_spans(600, 10.0, 5.0, 64)  # 60 s
    assert len(spans) == 12 and spans[0][0] == 0 and spans[-1][1] == 600
    assert all(b - a == 50 for a, b in spans) and all(spans[i][1] == spans[i + 1][0] for i in range(11))
    capped = segment_spans(36_000, 10.0, 5.0, 64)  # an hour: 720 windows wanted, 64 kept, still covering it all
    assert len(capped) == 64 and capped[0][0] == 0 and capped[-1][1] == 36_000
    assert {b - a for a, b in capped} <= {562, 563} and all(capped[i][1] == capped[i + 1][0] for i in range(63))
    assert segment_spans(600, 10.0, 0.0, 64) == segment_spans(600, 10.0, -1.0, 64) == [(0, 600)]
    assert segment_spans(600, 0.0, 5.0, 64) == [(0, 600)]  # no usable frame rate: one window
    assert len(segment_spans(3, 1.0, 0.5, 64)) == 3  # never more windows than frames


def test_read_segments_of_a_short_clip_equals_read_frames(world: Path) -> None:
    from multimodal_rec.data.frames import read_segments

    path = world / pd.read_csv(world / "catalog.csv").iloc[2]["path"]
    for backend in ("decord", "pyav"):
        frames, spans = read_segments(path, 8, 64, 5.0, 64, backend)
        assert frames.shape == (1, 8, 64, 64, 3) and spans.shape == (1, 2) and spans[0, 0] == 0 and spans[0, 1] > 0
        np.testing.assert_array_equal(frames[0], read_frames(path, 8, 64, backend))


def _colour_share(frames: np.ndarray, rgb: tuple[int, int, int]) -> float:
    return float((np.abs(frames.astype(int) - np.array(rgb)).sum(-1) < 90).mean())


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_read_segments_of_a_long_video(tmp_path: Path, backend: str) -> None:
    from long_video import PARTS, make_long_video

    from multimodal_rec.data.frames import read_segments
    from multimodal_rec.data.synth.render import RGB

    duration = make_long_video(tmp_path / "long.mp4")  # three 3.3 s parts, 10 fps
    frames, spans = read_segments(tmp_path / "long.mp4", 4, 64, 3.3, 64, backend)
    assert frames.shape == (3, 4, 64, 64, 3) and duration == 9.9
    np.testing.assert_allclose(spans, [[0, 3.3], [3.3, 6.6], [6.6, 9.9]], atol=1e-9)
    for i, (colour, _, _) in enumerate(PARTS):  # each segment shows its own part
        shares = {c: _colour_share(frames[i], RGB[c]) for c, _, _ in PARTS}
        assert max(shares, key=shares.get) == colour, (i, shares)
    frames, spans = read_segments(tmp_path / "long.mp4", 4, 64, 3.3, 2, backend)  # capped: 2 windows, all covered
    assert frames.shape[0] == 2 and spans[0, 0] == 0 and spans[-1, 1] == pytest.approx(9.9)
    frames, spans = read_segments(tmp_path / "long.mp4", 4, 64, 0.0, 64, backend)
    np.testing.assert_array_equal(frames[0], read_frames(tmp_path / "long.mp4", 4, 64, backend))


def test_cuts_keep_every_window_inside_one_shot() -> None:
    from multimodal_rec.data.frames import segment_spans

    cuts = [72, 160, 213]  # shots of 7.2, 8.8, 5.3 and 8.7 s at 10 fps
    spans = segment_spans(300, 10.0, 10.0, 64, cuts)
    assert spans == [(0, 72), (72, 160), (160, 213), (213, 300)]  # each shot one window (none over ~15 s)
    split = segment_spans(300, 10.0, 4.0, 64, cuts)  # ~4 s windows inside each shot
    assert all(not (a < c < b) for a, b in split for c in cuts) and split[0][0] == 0 and split[-1][1] == 300
    assert all(split[i][1] == split[i + 1][0] for i in range(len(split) - 1)) and len(split) == 7  # 2+2+1+2
    capped = segment_spans(300, 10.0, 4.0, 3, cuts)  # too many windows: 3 equal windows, ends moved to cuts
    assert len(capped) == 3 and capped[0][0] == 0 and capped[-1][1] == 300
    assert {b for _, b in capped[:-1]} <= set(cuts)
    assert segment_spans(48, 20.0, 5.0, 64, [20]) == [(0, 48)]  # a short clip stays one window whatever the cuts
    assert segment_spans(300, 10.0, 0.0, 64, cuts) == [(0, 72), (72, 160), (160, 213), (213, 300)]  # one per shot


def test_shot_detection_finds_the_parts_of_a_long_video(tmp_path: Path) -> None:
    pytest.importorskip("scenedetect")
    from long_video import PARTS, make_long_video

    from multimodal_rec.data.frames import read_segments
    from multimodal_rec.data.shots import detect_cuts
    from multimodal_rec.data.synth.render import RGB

    make_long_video(tmp_path / "long.mp4", part_frames=33, fps=10)  # cuts at frames 33 and 66
    assert detect_cuts(tmp_path / "long.mp4") == [33, 66]
    # fixed 5 s windows straddle the cuts; with shots every window is one part, whose colour fills its frames
    frames, spans = read_segments(tmp_path / "long.mp4", 4, 64, 5.0, 64, shots=True)
    np.testing.assert_allclose(spans, [[0, 3.3], [3.3, 6.6], [6.6, 9.9]], atol=1e-9)
    for i, (colour, _, _) in enumerate(PARTS):
        shares = {c: _colour_share(frames[i], RGB[c]) for c, _, _ in PARTS}
        assert max(shares, key=shares.get) == colour and min(shares.values()) == 0.0, (i, shares)
    assert detect_cuts(tmp_path / "missing.mp4") == []  # an unreadable file: decoding reports it, not detection
