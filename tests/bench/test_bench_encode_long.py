"""``mmrec bench encode --long``: its arithmetic on a hand-made result, and one tiny run (1 and 2 long videos)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from multimodal_rec.bench import encode_long as bench_long
from multimodal_rec.bench.encode import ceiling_of


def test_rates_and_ceiling_by_hand() -> None:
    assert bench_long.rates(4, 160.0, 8.0) == {"videos_per_s": 0.5, "video_seconds_per_s": 20.0}
    assert ceiling_of(2.0, 2.0, cuda=False) == ("1/(1/D + 1/M)", 1.0)
    assert ceiling_of(2.0, 3.0, cuda=True) == ("min(D, M)", 2.0)


def _fake_segments(path: str, num_frames: int, size: int, segment_seconds: float, max_segments: int, shots: bool):
    """Two 3-second segments per video (stands in for frames.read_segments, which is not needed here)."""
    frames = np.zeros((2, num_frames, size, size, 3), dtype=np.uint8)
    return frames, np.array([[0.0, 3.0], [3.0, 6.0]])


def test_bench_encode_long_tiny_run(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_long, "read_segments", _fake_segments)
    real_load = bench_long.load_model
    enc = SimpleNamespace(segment_seconds=3.0, max_segments=64, shots=False)
    monkeypatch.setattr(bench_long, "load_model", lambda d, dev: (real_load(d, dev)[0], SimpleNamespace(encode=enc)))
    kw = {"batch_size": 4, "workers": 0, "memory": False, "device": "cpu"}
    r = bench_long.bench_encode_long(trained, sizes=(2, 1), parts=2, **kw)
    assert (r["videos"], r["segments"], r["video_seconds"]) == (2, 4, 12.0)
    assert r["decode_only"]["video_seconds_per_s"] == pytest.approx(6 * r["decode_only"]["videos_per_s"], rel=0.01)
    assert r["model_only_vps"] == pytest.approx(r["model_only_segments_per_s"] / 2, rel=0.01)
    assert [s["videos"] for s in r["sizes"]] == [1, 2]
    for s in r["sizes"]:
        assert s["videos_per_s"] == pytest.approx(s["videos"] / s["seconds"], rel=0.01)
        assert s["video_seconds_per_s"] == pytest.approx(6 * s["videos_per_s"], rel=0.01)
        assert s["e_over_ceiling"] == pytest.approx(s["videos_per_s"] / r["ceiling_vps"], rel=0.02)
        assert "peak_rss_mb" not in s
    text = bench_long.format_encode_long(r)
    assert "decode only (D)" in text and "s of video/s" in text and len(text.splitlines()) == 7
