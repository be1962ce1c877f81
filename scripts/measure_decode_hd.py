"""Decode cost of one realistic-size clip, for docs/scaling.md: seconds per video on one core.

Usage: python scripts/measure_decode_hd.py [--width 1280 --height 720 --seconds 30 --fps 30 --gop 60]
Writes an H.264 clip of moving noise blocks with PyAV (like a real upload: one keyframe per ``--gop`` frames),
then times ``multimodal_rec.data.frames.read_frames`` (the encoder's decoder) sampling T frames at the model's size.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from gpu_probes import write_hd_clip  # the same clip writer as the GPU check (scripts/ is on sys.path)

from multimodal_rec.data.frames import read_frames


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--seconds", type=int, default=30)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--gop", type=int, default=60)
    p.add_argument("--frames", type=int, default=8, help="frames sampled per clip (the model's num_frames)")
    p.add_argument("--size", type=int, default=224, help="output frame size (the model's image_size)")
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        write_hd_clip(str(clip), a.width, a.height, a.seconds, a.fps, a.gop)
        out = {"clip": f"{a.width}x{a.height} {a.seconds}s {a.fps}fps gop {a.gop}", "bytes": clip.stat().st_size}
        for backend in ("decord", "pyav"):
            times = []
            for _ in range(a.repeat):
                t0 = time.perf_counter()
                frames = read_frames(clip, a.frames, a.size, backend=backend)
                times.append(time.perf_counter() - t0)
            assert frames.shape == (a.frames, a.size, a.size, 3)
            out[f"{backend}_s_per_video_min"] = round(min(times), 3)
            out[f"{backend}_s_per_video_median"] = round(float(np.median(times)), 3)
        print(json.dumps(out))


if __name__ == "__main__":
    main()
