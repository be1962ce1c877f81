"""Long synthetic videos: several clips of the synthetic world played back to back, with the ground truth of which
colour/shape/motion plays when (``moments.csv``), to measure segment search and moment localisation.

Each video has ``parts`` parts; each part is one combination rendered by the short world's renderer for 4-8 s at
the video's frame rate (10-15 fps) and size. Combinations are dealt so every one of the 126 appears in about the
same number of videos (126 videos x 6 parts: each in exactly 6, like the short world's 6 clips per combination);
a video never repeats a combination, so no two adjacent parts are alike and each query matches at most one part.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multimodal_rec.data.synth.names import made_up_names, titled
from multimodal_rec.data.synth.render import ClipSpec, render_clip, write_frames
from multimodal_rec.data.synth.vocab import COMBOS, make_captions, motion_phrase
from multimodal_rec.data.synth.world import write_csv_atomic

LOG = logging.getLogger(__name__)

CATALOG_COLUMNS = ("video_id", "path", "title", "duration_s", "fps", "width", "height")
MOMENT_COLUMNS = ("video_id", "part", "start_s", "end_s", "color", "shape", "motion")


@dataclass
class LongSummary:
    """What :func:`make_long_world` wrote under ``out``."""

    out: Path
    videos: int
    parts: int
    seconds: float  # total duration of all videos


@dataclass
class LongVideo:
    """One long video's plan: its size, rate and parts (a clip spec each, played in order)."""

    video_id: str
    width: int
    height: int
    fps: int
    parts: list[ClipSpec]
    caption_seed: tuple[int, ...]

    @property
    def frames(self) -> int:
        return sum(p.frames for p in self.parts)


def assign_parts(videos: int, parts: int, rng: np.random.Generator) -> list[list[tuple[str, str, str]]]:
    """Combinations per video: each part takes a least-used combination not yet in the video (random among ties),
    so counts over the catalog differ by at most about one and a video never repeats a combination."""
    counts = np.zeros(len(COMBOS), dtype=np.int64)
    out: list[list[tuple[str, str, str]]] = []
    for _ in range(videos):
        chosen: list[int] = []
        for _ in range(parts):
            free = np.setdiff1d(np.arange(len(COMBOS)), chosen)
            least = free[counts[free] == counts[free].min()]
            c = int(least[int(rng.integers(len(least)))])
            chosen.append(c)
            counts[c] += 1
        out.append([COMBOS[c] for c in chosen])
    return out


def plan_long(videos: int, parts: int, seed: int) -> list[LongVideo]:
    """Every long video's plan (no files touched); same arguments, same plan."""
    combos = assign_parts(videos, parts, np.random.default_rng([seed, 11]))
    digits = max(4, len(str(videos - 1)))
    plan: list[LongVideo] = []
    for i, video_combos in enumerate(combos):
        rng = np.random.default_rng([seed, 12, i])
        vid = f"lv{i:0{digits}d}"
        width, height, fps = int(rng.integers(32, 65)) * 2, int(rng.integers(32, 65)) * 2, int(rng.integers(10, 16))
        specs = [
            ClipSpec(
                video_id=vid,
                color=color,
                shape=shape,
                motion=motion,
                width=width,
                height=height,
                fps=fps,
                frames=int(rng.integers(4 * fps, 8 * fps + 1)),
                bg_kind="noisy" if rng.random() < 0.4 else "plain",
                seed=(seed, 13, i, j),
            )
            for j, (color, shape, motion) in enumerate(video_combos)
        ]
        plan.append(LongVideo(vid, width, height, fps, specs, (seed, 14, i)))
    return plan


def moment_rows(video: LongVideo) -> list[tuple[object, ...]]:
    """Ground truth of one video: (video_id, part, start_s, end_s, color, shape, motion), in time order."""
    rows, start = [], 0
    for j, p in enumerate(video.parts):
        end = start + p.frames
        rows.append(
            (video.video_id, j, f"{start / video.fps:.3f}", f"{end / video.fps:.3f}", p.color, p.shape, p.motion)
        )
        start = end
    return rows


def make_long_world(
    out: str | Path,
    videos: int = 126,
    parts: int = 6,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> LongSummary:
    """Write ``videos`` long videos (videos/*.mp4), catalog.csv, moments.csv, captions.csv (one caption per part)
    and an empty interactions.csv under ``out``. Same arguments => byte-identical files."""
    if videos < 1:
        raise ValueError(f"videos must be >= 1, got {videos}")
    if not 1 <= parts <= len(COMBOS):
        raise ValueError(f"parts must be in [1, {len(COMBOS)}], got {parts}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    out = Path(out)
    video_dir = out / "videos"
    video_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_long(videos, parts, seed)
    LOG.info("rendering %d long videos (%d parts each) into %s", videos, parts, video_dir)
    for done, v in enumerate(plan, start=1):
        frames = np.concatenate([render_clip(p) for p in v.parts])  # [T, H, W, 3]
        write_frames(frames, v.fps, video_dir, v.video_id)
        if progress is not None:
            progress(done, videos)
    names = made_up_names(videos, np.random.default_rng([seed, 7]))
    catalog = []
    for v, name in zip(plan, names, strict=True):
        first = v.parts[0]  # the title names the opening part, as an episode's title might
        title = titled(name, first.color, first.shape, motion_phrase(first.motion))
        catalog.append(
            (v.video_id, f"videos/{v.video_id}.mp4", title, f"{v.frames / v.fps:.3f}", v.fps, v.width, v.height)
        )
    write_csv_atomic(out / "catalog.csv", CATALOG_COLUMNS, catalog)
    write_csv_atomic(out / "moments.csv", MOMENT_COLUMNS, [r for v in plan for r in moment_rows(v)])
    captions = []
    for v in plan:
        rng = np.random.default_rng(v.caption_seed)
        captions += [(v.video_id, make_captions(rng, p.color, p.shape, p.motion, p.bg_kind)[0]) for p in v.parts]
    write_csv_atomic(out / "captions.csv", ("video_id", "caption"), captions)
    write_csv_atomic(out / "interactions.csv", ("user_id", "video_id", "timestamp", "text"), [])
    seconds = sum(v.frames / v.fps for v in plan)
    LOG.info("long world at %s: %d videos x %d parts, %.0f s of video", out, videos, parts, seconds)
    return LongSummary(out=out, videos=videos, parts=parts, seconds=seconds)
