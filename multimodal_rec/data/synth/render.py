"""Rendering one synthetic clip: a coloured shape moving over a dark background, encoded to h264 reproducibly."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

# Saturated, well separated RGB values; they survive yuv420p + crf 20 (interiors stay within a few levels).
RGB: dict[str, tuple[int, int, int]] = {
    "red": (225, 25, 25),
    "green": (25, 195, 45),
    "blue": (35, 65, 240),
    "yellow": (245, 225, 25),
    "purple": (160, 35, 210),
    "orange": (250, 135, 10),
    "white": (250, 250, 250),
}

_CRF = 20


@dataclass
class ClipSpec:
    """Everything that determines one clip's pixels and file (same spec, same bytes)."""

    video_id: str
    color: str
    shape: str
    motion: str
    width: int
    height: int
    fps: int
    frames: int
    bg_kind: str
    seed: tuple[int, ...]


def _shape_mask(shape: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    """Boolean mask of a filled shape with half-size ``r`` centred at (cx, cy)."""
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    # upward triangle: apex at (cx, cy - r), base on y = cy + r, base width 2r
    return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2.0)


def _background(rng: np.random.Generator, spec: ClipSpec) -> np.ndarray:
    """A dark grey-ish background (plain or static-noisy), far from every object colour."""
    level = rng.uniform(25, 85)
    tint = rng.uniform(-10, 10, size=3)
    base = np.clip(level + tint, 0, 255)
    img = np.broadcast_to(base, (spec.height, spec.width, 3)).astype(np.float32)
    if spec.bg_kind == "noisy":
        sigma = rng.uniform(8, 16)
        lum = rng.normal(0.0, sigma, size=(spec.height, spec.width, 1)).astype(np.float32)
        img = img + lum + rng.normal(0.0, sigma / 3, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def render_clip(spec: ClipSpec) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 of one clip, fully determined by ``spec``."""
    rng = np.random.default_rng(spec.seed)
    w, h, n = spec.width, spec.height, spec.frames
    bg = _background(rng, spec)
    side = min(w, h)
    t = np.linspace(0.0, 1.0, n)
    if spec.motion in ("left", "right", "up", "down"):
        r = rng.uniform(0.12, 0.2) * side
        horizontal = spec.motion in ("left", "right")
        span = (w if horizontal else h) - 2 * r  # centre range that keeps the object fully visible
        travel = rng.uniform(0.5, 0.85) * span
        start = r + rng.uniform(0, span - travel)  # position of the low end of the path
        path = start + travel * t
        if spec.motion in ("left", "up"):
            path = path[::-1]
        other = rng.uniform(r, (h if horizontal else w) - r)
        cxs = path if horizontal else np.full(n, other)
        cys = np.full(n, other) if horizontal else path
        rs = np.full(n, r)
    else:
        r0 = rng.uniform(0.1, 0.13) * side  # small objects lose chroma at edges under 4:2:0
        r1 = r0 * rng.uniform(2.2, 2.6)
        cx = rng.uniform(r1, w - r1)
        cy = rng.uniform(r1, h - r1)
        rs = r0 + (r1 - r0) * t
        if spec.motion == "shrinking":
            rs = rs[::-1]
        cxs, cys = np.full(n, cx), np.full(n, cy)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    frames = np.repeat(bg[None], n, axis=0)
    color = np.array(RGB[spec.color], dtype=np.uint8)
    for i in range(n):
        frames[i][_shape_mask(spec.shape, xx, yy, float(cxs[i]), float(cys[i]), float(rs[i]))] = color
    return frames


def _encode(frames: np.ndarray, fps: int, path: Path) -> None:
    """Encode RGB frames to an h264/yuv420p mp4 at ``path``, reproducibly.

    Single-threaded x264 alone is NOT reproducible here: with macroblock-tree rate control on, a few percent of
    clips come out different from run to run (x264's SIMD lookahead apparently reads uninitialised memory).
    ``mbtree=0`` removes that at no speed cost; ``asm=0`` would too but is ~4x slower.
    """
    n, h, w, _ = frames.shape
    options = {"crf": str(_CRF), "preset": "fast", "x264-params": "mbtree=0"}
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.thread_count = 1
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_frames(frames: np.ndarray, fps: int, video_dir: Path, video_id: str) -> None:
    """Encode ``frames`` to ``video_dir/<video_id>.mp4`` (temp + rename: never a half-written clip)."""
    final = video_dir / f"{video_id}.mp4"
    tmp = video_dir / f".{video_id}.{os.getpid()}.tmp.mp4"
    try:
        _encode(frames, fps, tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_clip(spec: ClipSpec, video_dir: Path) -> None:
    """Render and encode ``spec`` to ``video_dir/<video_id>.mp4``."""
    write_frames(render_clip(spec), spec.fps, video_dir, spec.video_id)
