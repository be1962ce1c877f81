"""The synthetic world: which clips exist (catalog, splits, captions), who watched what, and the files written.

Users have a few latent "interests" and watch in sessions that stick to one interest, so recent history predicts
the next item better than long-term history.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multimodal_rec.data.synth.names import made_up_names, titled
from multimodal_rec.data.synth.render import ClipSpec, write_clip
from multimodal_rec.data.synth.vocab import COMBOS, interest_query, make_captions, motion_phrase, pick

LOG = logging.getLogger(__name__)

_BASE_TIME = 1_700_000_000


@dataclass
class WorldSummary:
    """What :func:`make_world` wrote (counts of rows/files under ``out``)."""

    out: Path
    videos: int
    users: int
    interactions: int
    captions: int


def _assign_combos(videos: int, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """Combination per video: round-robin (each >= floor(videos/126) times) then shuffled."""
    if videos < len(COMBOS):
        order = rng.permutation(len(COMBOS))[:videos]
        return [COMBOS[int(i)] for i in order]
    combos = [COMBOS[i % len(COMBOS)] for i in range(videos)]
    return [combos[int(i)] for i in rng.permutation(videos)]


def _assign_splits(combos: Sequence[tuple[str, str, str]], holdout: float, rng: np.random.Generator) -> list[str]:
    """Per combination, a ``holdout`` share (nearest, >= 1 if it has >= 3 videos, < all) goes to ``test``."""
    splits = ["train"] * len(combos)
    by_combo: dict[tuple[str, str, str], list[int]] = {}
    for i, c in enumerate(combos):
        by_combo.setdefault(c, []).append(i)
    for combo in COMBOS:  # fixed iteration order => deterministic rng use
        idx = by_combo.get(combo, [])
        k = len(idx)
        if k == 0:
            continue
        n_test = math.floor(holdout * k + 0.5)
        if k >= 3:
            n_test = max(1, n_test)
        if k >= 2:
            n_test = min(n_test, k - 1)
        for j in rng.choice(k, size=n_test, replace=False) if n_test else []:
            splits[idx[int(j)]] = "test"
    return splits


def _plan(videos: int, seed: int, holdout: float) -> tuple[list[ClipSpec], list[str], list[list[str]]]:
    """Clip specs, splits and captions for every video (no files touched)."""
    combos = _assign_combos(videos, np.random.default_rng([seed, 1]))
    splits = _assign_splits(combos, holdout, np.random.default_rng([seed, 2]))
    digits = max(4, len(str(videos - 1)))
    specs: list[ClipSpec] = []
    captions: list[list[str]] = []
    for i, (color, shape, motion) in enumerate(combos):
        rng = np.random.default_rng([seed, 3, i])
        spec = ClipSpec(
            video_id=f"v{i:0{digits}d}",
            color=color,
            shape=shape,
            motion=motion,
            width=int(rng.integers(32, 65)) * 2,
            height=int(rng.integers(32, 65)) * 2,
            fps=int(rng.integers(12, 26)),
            frames=int(rng.integers(16, 33)),
            bg_kind="noisy" if rng.random() < 0.4 else "plain",
            seed=(seed, 4, i),
        )
        specs.append(spec)
        captions.append(make_captions(rng, color, shape, motion, spec.bg_kind))
    return specs, splits, captions


def _popularity(n: int, rng: np.random.Generator) -> np.ndarray:
    """Zipf-like popularity weights over a seeded random ranking of the videos."""
    ranks = rng.permutation(n)
    return 1.0 / (ranks + 1.0) ** 0.8


def _matches(specs: Sequence[ClipSpec], interest: dict[str, str]) -> np.ndarray:
    return np.array([i for i, s in enumerate(specs) if all(getattr(s, k) == v for k, v in interest.items())])


def _simulate_users(
    specs: Sequence[ClipSpec], captions: Sequence[Sequence[str]], users: int, seed: int
) -> list[tuple[str, str, int, str]]:
    """Sequential, session-based interactions: (user_id, video_id, timestamp, text) sorted by user, time."""
    n = len(specs)
    pop = _popularity(n, np.random.default_rng([seed, 5]))
    attrs = ("color", "shape", "motion")
    digits = max(3, len(str(max(users - 1, 0))))
    match_cache: dict[tuple[tuple[str, str], ...], np.ndarray] = {}
    rows: list[tuple[str, str, int, str]] = []
    for u in range(users):
        rng = np.random.default_rng([seed, 6, u])
        uid = f"u{u:0{digits}d}"
        # Interests: partial patterns taken from real videos so each matches at least one clip.
        n_int = int(rng.integers(2, 4))
        interests: list[dict[str, str]] = []
        for _ in range(20 * n_int):
            if len(interests) == n_int:
                break
            s = specs[int(rng.integers(n))]
            keys = rng.choice(3, size=int(rng.choice([1, 2], p=[0.5, 0.5])), replace=False)
            cand = {attrs[k]: getattr(s, attrs[k]) for k in sorted(int(k) for k in keys)}
            if cand not in interests:
                interests.append(cand)
        n_events = int(rng.integers(12, 41))
        ts = _BASE_TIME + int(rng.integers(0, 30 * 86400))
        seen = np.zeros(n, dtype=bool)
        current = int(rng.integers(len(interests)))
        done = 0
        while done < n_events:
            if done:
                others = [k for k in range(len(interests)) if k != current]
                current = others[int(rng.integers(len(others)))] if others else current
                ts += int(rng.integers(3600, 3 * 86400))
            interest = interests[current]
            key = tuple(sorted(interest.items()))
            if key not in match_cache:
                match_cache[key] = _matches(specs, interest)
            pool = match_cache[key]
            for _ in range(min(int(rng.integers(3, 9)), n_events - done)):
                on_topic = rng.random() < 0.85
                cand = pool if on_topic else np.arange(n)
                fresh = cand[~seen[cand]]
                cand = fresh if len(fresh) else cand
                w = pop[cand]
                vid = int(cand[rng.choice(len(cand), p=w / w.sum())])
                seen[vid] = True
                ts += int(rng.integers(20, 900))
                text = pick(rng, captions[vid]) if rng.random() < 0.75 else interest_query(rng, interest)
                rows.append((uid, specs[vid].video_id, ts, text))
                done += 1
    return rows


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def write_csv_atomic(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Write a CSV (header + rows, "\\n" line ends) to ``path`` atomically (temp + rename)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def make_world(
    out: str | Path,
    videos: int = 756,
    users: int = 300,
    seed: int = 0,
    holdout: float = 0.34,
    progress: Callable[[int, int], None] | None = None,
) -> WorldSummary:
    """Write the synthetic world (videos/*.mp4, catalog.csv, captions.csv, interactions.csv) under ``out``.

    Same arguments => byte-identical CSVs and identical decoded frames. ``progress(done, total)`` is called
    after each video file is written.
    """
    if videos < 1:
        raise ValueError(f"videos must be >= 1, got {videos}")
    if users < 0:
        raise ValueError(f"users must be >= 0, got {users}")
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    out = Path(out)
    video_dir = out / "videos"
    video_dir.mkdir(parents=True, exist_ok=True)

    specs, splits, captions = _plan(videos, seed, holdout)
    LOG.info("rendering %d videos into %s", videos, video_dir)
    for done, spec in enumerate(specs, start=1):
        write_clip(spec, video_dir)
        if progress is not None:
            progress(done, videos)

    names = made_up_names(len(specs), np.random.default_rng([seed, 7]))  # its own stream: nothing else moves
    catalog_rows = [
        (
            s.video_id,
            f"videos/{s.video_id}.mp4",
            titled(name, s.color, s.shape, motion_phrase(s.motion)),
            s.color,
            s.shape,
            s.motion,
            f"{s.frames / s.fps:.3f}",
            s.fps,
            s.width,
            s.height,
            split,
        )
        for s, split, name in zip(specs, splits, names, strict=True)
    ]
    write_csv_atomic(
        out / "catalog.csv",
        ("video_id", "path", "title", "color", "shape", "motion", "duration_s", "fps", "width", "height", "split"),
        catalog_rows,
    )
    caption_rows = [(s.video_id, c) for s, caps in zip(specs, captions, strict=True) for c in caps]
    write_csv_atomic(out / "captions.csv", ("video_id", "caption"), caption_rows)
    interactions = _simulate_users(specs, captions, users, seed)
    write_csv_atomic(out / "interactions.csv", ("user_id", "video_id", "timestamp", "text"), interactions)
    LOG.info(
        "world at %s: %d videos, %d users, %d interactions, %d captions",
        out,
        videos,
        users,
        len(interactions),
        len(caption_rows),
    )
    return WorldSummary(out=out, videos=videos, users=users, interactions=len(interactions), captions=len(caption_rows))
