"""Synthetic demo world: tiny coloured-shape videos, captions, and sequential user interactions.

Every clip shows ONE object (circle, square or triangle) in one of seven colours doing one of six
motions. Captions describe the clip with a fixed caption vocabulary; :func:`paraphrase_queries`
describes the same combinations with a word-disjoint vocabulary so a text model can be tested on
language it never saw during training. Users have a few latent "interests" and watch in sessions
that stick to one interest, so recent history predicts the next item better than long-term history.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

LOG = logging.getLogger(__name__)

COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "white")
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down", "growing", "shrinking")

# Saturated, well separated RGB values; they survive yuv420p + crf 20 (interiors stay within a few levels).
_RGB: dict[str, tuple[int, int, int]] = {
    "red": (225, 25, 25),
    "green": (25, 195, 45),
    "blue": (35, 65, 240),
    "yellow": (245, 225, 25),
    "purple": (160, 35, 210),
    "orange": (250, 135, 10),
    "white": (250, 250, 250),
}

_COMBOS: tuple[tuple[str, str, str], ...] = tuple(itertools.product(COLORS, SHAPES, MOTIONS))
_CRF = 20
_CAPTIONS_PER_VIDEO = 5
_BASE_TIME = 1_700_000_000

# ---------------------------------------------------------------------------------------------
# Caption vocabulary (training side). The base colour name is always present in a caption.
# ---------------------------------------------------------------------------------------------
_CAPTION_COLOR_FORMS = ("{c}", "{c}", "bright {c}", "vivid {c}", "{c} colored", "solid {c}")
_CAPTION_SHAPES: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "ball", "dot", "round shape"),
    "square": ("square", "tile", "square shape", "patch"),
    "triangle": ("triangle", "triangular shape", "spike", "pointed shape"),
}
_CAPTION_SHAPE_PLURALS: dict[str, tuple[str, ...]] = {
    "circle": ("circles", "balls", "dots"),
    "square": ("squares", "tiles", "patches"),
    "triangle": ("triangles", "spikes"),
}


def _dir_phrases(d: str) -> tuple[str, ...]:
    return (
        f"moving {d}",
        f"going {d}",
        f"sliding to the {d}" if d in ("left", "right") else f"sliding {d}",
        f"travelling {d}",
        f"traveling {d}",
        f"shifting {d}",
        f"moving to the {d}" if d in ("left", "right") else f"moving {d} the screen",
    )


_CAPTION_MOTIONS: dict[str, tuple[str, ...]] = {
    "left": _dir_phrases("left"),
    "right": _dir_phrases("right"),
    "up": (*_dir_phrases("up"), "rising"),
    "down": (*_dir_phrases("down"), "falling", "sinking"),
    "growing": (
        "growing",
        "getting bigger",
        "getting larger",
        "becoming larger",
        "increasing in size",
        "growing larger",
    ),
    "shrinking": (
        "shrinking",
        "getting smaller",
        "becoming smaller",
        "decreasing in size",
        "getting tinier",
        "shrinking away",
    ),
}
_BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "plain": ("plain", "dark", "grey", "gray", "plain dark", "solid dark"),
    "noisy": ("noisy", "grainy", "speckled", "noisy dark"),
}
# {a}: article, {col}: colour phrase, {shp}: shape phrase, {mot}: motion phrase, {bg}: background word(s).
_CAPTION_TEMPLATES = (
    "{a} {col} {shp} {mot}",
    "a video of {a} {col} {shp} {mot}",
    "clip showing {a} {col} {shp} {mot}",
    "{col} {shp} {mot} on a {bg} background",
    "there is {a} {col} {shp} {mot}",
    "watch the {col} {shp} {mot}",
    "in this short clip {a} {col} {shp} is {mot}",
    "{a} {shp} that is {col} and {mot}",
    "animation of {a} {col} {shp} {mot} over a {bg} backdrop",
)
# Search queries users type (interactions.csv `text`); same vocabulary family as the captions.
_QUERY_TEMPLATES = ("{subj}", "{subj}", "videos of {subj}", "show me {subj}", "clips with {subj}")
_QUERY_GENERIC_SUBJECTS = ("shapes", "things", "objects", "videos", "clips")  # last two only as bare queries

# ---------------------------------------------------------------------------------------------
# Paraphrase vocabulary (test side): must share no content word with the caption side.
# ---------------------------------------------------------------------------------------------
_PARA_COLORS: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "scarlet", "ruby", "cherry"),
    "green": ("emerald", "jade", "lime", "grassy"),
    "blue": ("azure", "cobalt", "sapphire", "navy"),
    "yellow": ("lemon", "canary", "golden", "mustard"),
    "purple": ("violet", "lavender", "plum", "amethyst"),
    "orange": ("tangerine", "apricot", "amber", "pumpkin"),
    "white": ("ivory", "snowy", "milky", "chalky"),
}
_PARA_SHAPES: dict[str, tuple[str, ...]] = {
    "circle": ("disc", "orb", "sphere", "globe"),
    "square": ("box", "block", "quadrilateral", "crate"),
    "triangle": ("pyramid", "wedge", "arrowhead", "three sided figure"),
}
_PARA_MOTIONS: dict[str, tuple[str, ...]] = {
    "left": ("drifting leftward", "heading westward", "gliding leftwards", "cruising toward the west"),
    "right": ("drifting rightward", "heading eastward", "gliding rightwards", "cruising toward the east"),
    "up": ("ascending", "climbing skyward", "drifting upward", "heading upwards"),
    "down": ("descending", "dropping downward", "plummeting", "heading downwards"),
    "growing": ("expanding", "swelling", "enlarging", "inflating"),
    "shrinking": ("contracting", "dwindling", "receding", "deflating"),
}
_PARA_TEMPLATES = (
    "{col} {shp} {mot}",
    "footage of {a} {col} {shp} {mot}",
    "find {a} {shp} in {col} which keeps {mot}",
    "scene where {a} {col} {shp} is {mot}",
)
_PARAS_PER_COMBO = 3

_WORD_RE = re.compile(r"[a-z]+")


@dataclass
class WorldSummary:
    """What :func:`make_world` wrote (counts of rows/files under ``out``)."""

    out: Path
    videos: int
    users: int
    interactions: int
    captions: int


# ---------------------------------------------------------------------------------------------
# Text helpers
# ---------------------------------------------------------------------------------------------
def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _fill(template: str, col: str, shp: str, mot: str, bg: str = "") -> str:
    """Fill a sentence template; the article agrees with whatever word follows ``{a}``."""
    follow = template.split("{a}", 1)[1].strip() if "{a}" in template else ""
    nxt = follow.format(a="", col=col, shp=shp, mot=mot, bg=bg).strip()
    text = template.format(a=_article(nxt), col=col, shp=shp, mot=mot, bg=bg)
    return " ".join(text.split())


def _motion_phrase(motion: str) -> str:
    return f"moving {motion}" if motion in ("left", "right", "up", "down") else motion


def vocab_queries() -> list[dict]:
    """One canonical query per colour x shape x motion, in caption words (e.g. "a red circle moving left")."""
    return [
        {"query": _fill("{a} {col} {shp} {mot}", c, s, _motion_phrase(m)), "color": c, "shape": s, "motion": m}
        for c, s, m in _COMBOS
    ]


def paraphrase_queries() -> list[dict]:
    """Deterministic free-text paraphrases (several per combination) using only words no caption can contain."""
    out: list[dict] = []
    for i, (c, s, m) in enumerate(_COMBOS):
        for k in range(_PARAS_PER_COMBO):
            j = i + k
            col = _PARA_COLORS[c][j % len(_PARA_COLORS[c])]
            shp = _PARA_SHAPES[s][(j // 2 + k) % len(_PARA_SHAPES[s])]
            mot = _PARA_MOTIONS[m][(j + 2 * k) % len(_PARA_MOTIONS[m])]
            tpl = _PARA_TEMPLATES[(i + k) % len(_PARA_TEMPLATES)]
            out.append({"query": _fill(tpl, col, shp, mot), "color": c, "shape": s, "motion": m})
    return out


def _words(text: str) -> set[str]:
    return set(_WORD_RE.findall(text.lower()))


def caption_vocabulary() -> set[str]:
    """Every lowercase word the caption and search-query generators can emit (the training-side vocabulary)."""
    vocab: set[str] = set()
    for tpl in _CAPTION_TEMPLATES + _QUERY_TEMPLATES:
        vocab |= _words(re.sub(r"\{[a-z]+\}", " ", tpl))
    vocab |= {"a", "an"}
    for c in COLORS:
        for form in _CAPTION_COLOR_FORMS:
            vocab |= _words(form.format(c=c))
    for table in (_CAPTION_SHAPES, _CAPTION_SHAPE_PLURALS, _CAPTION_MOTIONS, _BACKGROUND_WORDS):
        for phrases in table.values():
            for p in phrases:
                vocab |= _words(p)
    for p in _QUERY_GENERIC_SUBJECTS:
        vocab |= _words(p)
    return vocab


def _make_captions(rng: np.random.Generator, color: str, shape: str, motion: str, bg_kind: str) -> list[str]:
    """Five distinct captions of one clip, each naming its colour, shape and motion."""
    tpl_idx = rng.choice(len(_CAPTION_TEMPLATES), size=_CAPTIONS_PER_VIDEO, replace=False)
    caps: list[str] = []
    for t in tpl_idx:
        col = _CAPTION_COLOR_FORMS[rng.integers(len(_CAPTION_COLOR_FORMS))].format(c=color)
        shp = _pick(rng, _CAPTION_SHAPES[shape])
        mot = _pick(rng, _CAPTION_MOTIONS[motion])
        bg = _pick(rng, _BACKGROUND_WORDS[bg_kind])
        caps.append(_fill(_CAPTION_TEMPLATES[int(t)], col, shp, mot, bg))
    return caps


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _interest_query(rng: np.random.Generator, interest: dict[str, str]) -> str:
    """A search query describing a (partial) attribute pattern in caption-vocabulary words."""
    template = _pick(rng, _QUERY_TEMPLATES)
    parts: list[str] = []
    if "color" in interest:
        parts.append(interest["color"])
    if "shape" in interest:
        parts.append(_pick(rng, _CAPTION_SHAPE_PLURALS[interest["shape"]]))
    else:  # avoid "videos of red videos"
        generic = _QUERY_GENERIC_SUBJECTS if template == "{subj}" else _QUERY_GENERIC_SUBJECTS[:3]
        parts.append(_pick(rng, generic))
    if "motion" in interest:
        parts.append(_pick(rng, _CAPTION_MOTIONS[interest["motion"]]))
    return template.format(subj=" ".join(parts))


# ---------------------------------------------------------------------------------------------
# Video rendering
# ---------------------------------------------------------------------------------------------
@dataclass
class _ClipSpec:
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


def _background(rng: np.random.Generator, spec: _ClipSpec) -> np.ndarray:
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


def _render(spec: _ClipSpec) -> np.ndarray:
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
    color = np.array(_RGB[spec.color], dtype=np.uint8)
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


def _write_clip(spec: _ClipSpec, video_dir: Path) -> None:
    final = video_dir / f"{spec.video_id}.mp4"
    tmp = video_dir / f".{spec.video_id}.{os.getpid()}.tmp.mp4"
    try:
        _encode(_render(spec), spec.fps, tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# World planning
# ---------------------------------------------------------------------------------------------
def _assign_combos(videos: int, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """Combination per video: round-robin (each >= floor(videos/126) times) then shuffled."""
    if videos < len(_COMBOS):
        order = rng.permutation(len(_COMBOS))[:videos]
        return [_COMBOS[int(i)] for i in order]
    combos = [_COMBOS[i % len(_COMBOS)] for i in range(videos)]
    return [combos[int(i)] for i in rng.permutation(videos)]


def _assign_splits(combos: Sequence[tuple[str, str, str]], holdout: float, rng: np.random.Generator) -> list[str]:
    """Per combination, a ``holdout`` share (nearest, >= 1 if it has >= 3 videos, < all) goes to ``test``."""
    splits = ["train"] * len(combos)
    by_combo: dict[tuple[str, str, str], list[int]] = {}
    for i, c in enumerate(combos):
        by_combo.setdefault(c, []).append(i)
    for combo in _COMBOS:  # fixed iteration order => deterministic rng use
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


def _plan(videos: int, seed: int, holdout: float) -> tuple[list[_ClipSpec], list[str], list[list[str]]]:
    """Clip specs, splits and captions for every video (no files touched)."""
    combos = _assign_combos(videos, np.random.default_rng([seed, 1]))
    splits = _assign_splits(combos, holdout, np.random.default_rng([seed, 2]))
    digits = max(4, len(str(videos - 1)))
    specs: list[_ClipSpec] = []
    captions: list[list[str]] = []
    for i, (color, shape, motion) in enumerate(combos):
        rng = np.random.default_rng([seed, 3, i])
        spec = _ClipSpec(
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
        captions.append(_make_captions(rng, color, shape, motion, spec.bg_kind))
    return specs, splits, captions


def _popularity(n: int, rng: np.random.Generator) -> np.ndarray:
    """Zipf-like popularity weights over a seeded random ranking of the videos."""
    ranks = rng.permutation(n)
    return 1.0 / (ranks + 1.0) ** 0.8


def _matches(specs: Sequence[_ClipSpec], interest: dict[str, str]) -> np.ndarray:
    return np.array([i for i, s in enumerate(specs) if all(getattr(s, k) == v for k, v in interest.items())])


def _simulate_users(
    specs: Sequence[_ClipSpec], captions: Sequence[Sequence[str]], users: int, seed: int
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
                text = _pick(rng, captions[vid]) if rng.random() < 0.75 else _interest_query(rng, interest)
                rows.append((uid, specs[vid].video_id, ts, text))
                done += 1
    return rows


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def _write_csv_atomic(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
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
        _write_clip(spec, video_dir)
        if progress is not None:
            progress(done, videos)

    catalog_rows = [
        (
            s.video_id,
            f"videos/{s.video_id}.mp4",
            f"{s.color.capitalize()} {s.shape} {_motion_phrase(s.motion)}",
            s.color,
            s.shape,
            s.motion,
            f"{s.frames / s.fps:.3f}",
            s.fps,
            s.width,
            s.height,
            split,
        )
        for s, split in zip(specs, splits, strict=True)
    ]
    _write_csv_atomic(
        out / "catalog.csv",
        ("video_id", "path", "title", "color", "shape", "motion", "duration_s", "fps", "width", "height", "split"),
        catalog_rows,
    )
    caption_rows = [(s.video_id, c) for s, caps in zip(specs, captions, strict=True) for c in caps]
    _write_csv_atomic(out / "captions.csv", ("video_id", "caption"), caption_rows)
    interactions = _simulate_users(specs, captions, users, seed)
    _write_csv_atomic(out / "interactions.csv", ("user_id", "video_id", "timestamp", "text"), interactions)
    LOG.info(
        "world at %s: %d videos, %d users, %d interactions, %d captions",
        out,
        videos,
        users,
        len(interactions),
        len(caption_rows),
    )
    return WorldSummary(out=out, videos=videos, users=users, interactions=len(interactions), captions=len(caption_rows))
