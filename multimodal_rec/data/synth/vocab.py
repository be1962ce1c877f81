"""The synthetic world's language: caption vocabulary, search queries, and the word-disjoint paraphrases.

Captions describe a clip (colour, shape, motion) with a fixed caption vocabulary; :func:`paraphrase_queries`
describes the same combinations with a word-disjoint vocabulary so a text model can be tested on language it
never saw during training.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

import numpy as np

COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "white")
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down", "growing", "shrinking")

COMBOS: tuple[tuple[str, str, str], ...] = tuple(itertools.product(COLORS, SHAPES, MOTIONS))
_CAPTIONS_PER_VIDEO = 5

# ---------------------------------------------------------------------------------------------
# Caption vocabulary (training side). The base colour name is always present in a caption.
# ---------------------------------------------------------------------------------------------
_CAPTION_COLOR_FORMS = ("{c}", "{c}", "bright {c}", "vivid {c}", "{c} colored", "solid {c}")
CAPTION_SHAPES: dict[str, tuple[str, ...]] = {
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


CAPTION_MOTIONS: dict[str, tuple[str, ...]] = {
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


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _fill(template: str, col: str, shp: str, mot: str, bg: str = "") -> str:
    """Fill a sentence template; the article agrees with whatever word follows ``{a}``."""
    follow = template.split("{a}", 1)[1].strip() if "{a}" in template else ""
    nxt = follow.format(a="", col=col, shp=shp, mot=mot, bg=bg).strip()
    text = template.format(a=_article(nxt), col=col, shp=shp, mot=mot, bg=bg)
    return " ".join(text.split())


def motion_phrase(motion: str) -> str:
    """A motion as words: "moving left", or "growing" as it is."""
    return f"moving {motion}" if motion in ("left", "right", "up", "down") else motion


def vocab_queries() -> list[dict]:
    """One canonical query per colour x shape x motion, in caption words (e.g. "a red circle moving left")."""
    return [
        {"query": _fill("{a} {col} {shp} {mot}", c, s, motion_phrase(m)), "color": c, "shape": s, "motion": m}
        for c, s, m in COMBOS
    ]


def paraphrase_queries() -> list[dict]:
    """Deterministic free-text paraphrases (several per combination) using only words no caption can contain."""
    out: list[dict] = []
    for i, (c, s, m) in enumerate(COMBOS):
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
    for table in (CAPTION_SHAPES, _CAPTION_SHAPE_PLURALS, CAPTION_MOTIONS, _BACKGROUND_WORDS):
        for phrases in table.values():
            for p in phrases:
                vocab |= _words(p)
    for p in _QUERY_GENERIC_SUBJECTS:
        vocab |= _words(p)
    return vocab


def make_captions(rng: np.random.Generator, color: str, shape: str, motion: str, bg_kind: str) -> list[str]:
    """Five distinct captions of one clip, each naming its colour, shape and motion."""
    tpl_idx = rng.choice(len(_CAPTION_TEMPLATES), size=_CAPTIONS_PER_VIDEO, replace=False)
    caps: list[str] = []
    for t in tpl_idx:
        col = _CAPTION_COLOR_FORMS[rng.integers(len(_CAPTION_COLOR_FORMS))].format(c=color)
        shp = pick(rng, CAPTION_SHAPES[shape])
        mot = pick(rng, CAPTION_MOTIONS[motion])
        bg = pick(rng, _BACKGROUND_WORDS[bg_kind])
        caps.append(_fill(_CAPTION_TEMPLATES[int(t)], col, shp, mot, bg))
    return caps


def pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    """One of ``options``, drawn with ``rng`` (one integer draw: the world's random streams depend on it)."""
    return options[int(rng.integers(len(options)))]


def interest_query(rng: np.random.Generator, interest: dict[str, str]) -> str:
    """A search query describing a (partial) attribute pattern in caption-vocabulary words."""
    template = pick(rng, _QUERY_TEMPLATES)
    parts: list[str] = []
    if "color" in interest:
        parts.append(interest["color"])
    if "shape" in interest:
        parts.append(pick(rng, _CAPTION_SHAPE_PLURALS[interest["shape"]]))
    else:  # avoid "videos of red videos"
        generic = _QUERY_GENERIC_SUBJECTS if template == "{subj}" else _QUERY_GENERIC_SUBJECTS[:3]
        parts.append(pick(rng, generic))
    if "motion" in interest:
        parts.append(pick(rng, CAPTION_MOTIONS[interest["motion"]]))
    return template.format(subj=" ".join(parts))
