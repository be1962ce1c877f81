"""A tiny long video for tests: synthetic parts (one colour/shape/motion each) back to back in one mp4."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from multimodal_rec.data.synth.render import ClipSpec, _encode, render_clip

PARTS = (("red", "circle", "left"), ("green", "square", "up"), ("blue", "triangle", "growing"))


def make_long_video(path: Path, parts=PARTS, part_frames: int = 33, fps: int = 10, size: int = 64, seed: int = 0):
    """Write the parts (``part_frames`` frames each at ``fps``: 3.3 s) as one h264 mp4; returns its duration (s)."""
    frames = [
        render_clip(ClipSpec(f"part{i}", c, s, m, size, size, fps, part_frames, "plain", (seed, i)))
        for i, (c, s, m) in enumerate(parts)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    _encode(np.concatenate(frames), fps, path)
    return len(parts) * part_frames / fps
