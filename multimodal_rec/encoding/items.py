"""A catalog row's vectors from its raw encoder outputs: segments, content, text and the item vector.

:func:`combine` is the one pure function from :class:`~multimodal_rec.encoding.embed.EncodedRows` to what a bundle
holds; the encode job (:mod:`~multimodal_rec.encoding.finish`) and :func:`encode_items` (``Recommender.add_videos``)
both use it, so a video gets the same vectors either way.

- *content* = the L2-normalised duration-weighted mean of the video's segment vectors (one segment: that vector as
  is, bit-identical to a video encoded before segments existed). A mean, because recommendation matches a user's
  taste to the whole video; text search ranks by a video's best segment instead.
- *text* = the text tower over the row's ``encode.text_columns`` (non-blank values joined with ". ").
- *item* = ``normalize((1 - w) * content + w * text)``, ``w = encode.text_weight``; content alone without text (or
  ``w = 0``), text alone without a video file.
- each segment's *search* vector = ``normalize((1 - w) * segment + w * text)`` (the segment alone without text); a
  one-segment video's search vector is its item vector; a video without a file gets one search "segment" with the
  span (0, 0) holding its item vector, so every served video has at least one segment.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from multimodal_rec.encoding.embed import EncodedRows, embed_rows

LOG = logging.getLogger(__name__)
TEXT_SEPARATOR = ". "


@dataclass
class ItemVectors:
    """The vectors of the rows that were encoded (errors == ""), in order."""

    item: np.ndarray  # [n, D] what the index holds (before the popularity-prior column)
    content: np.ndarray  # [n, D] (zeros: no frames)
    text: np.ndarray | None  # [n, D] (zeros: no text); None when the frame has no text column
    seg_vectors: np.ndarray  # [S, D] per-segment search vectors
    seg_row: np.ndarray  # [S] int64: which of the n rows
    spans: np.ndarray  # [S, 2] float64 start_s, end_s


def text_columns(df: pd.DataFrame, enc: Any) -> list[str]:
    """The configured text columns present in ``df``, in the configured order."""
    return [c for c in enc.text_columns if c in df.columns]


def _cell_text(value: Any) -> str:
    """One cell as text: blank for missing values; a list (Parquet tags) joined with ", "."""
    if isinstance(value, list | tuple | np.ndarray):
        return ", ".join(s for v in value if (s := _cell_text(v)))
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return ""
    return str(value).strip()


def row_texts(df: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """Each row's text: the non-blank values of ``columns`` joined with ". " ("" when it has none)."""
    if not columns:
        return [""] * len(df)
    cells = zip(*(df[c] for c in columns), strict=True)
    return [TEXT_SEPARATOR.join(t for v in row if (t := _cell_text(v))) for row in cells]


def _normalize(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


def _mix(x: np.ndarray, t: np.ndarray, w: float) -> np.ndarray:
    """``normalize((1 - w) x + w t)``; ``x`` as is when ``w == 0``, ``t`` as is when ``w == 1``."""
    if w <= 0:
        return x
    if w >= 1:
        return np.broadcast_to(t, x.shape).astype(np.float32)
    return _normalize((1 - w) * x + w * t)


def _content(seg: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """The duration-weighted mean of a video's segment vectors, normalised (one segment: as is)."""
    if len(seg) == 1:
        return seg[0]
    dur = np.maximum(spans[:, 1] - spans[:, 0], 0.0)
    weights = dur if dur.sum() > 0 else np.ones(len(seg))
    return _normalize((weights[:, None] * seg).sum(0) / weights.sum())


def combine(rows: EncodedRows, text_weight: float, text_known: bool = True) -> ItemVectors:
    """The vectors of the encoded rows of ``rows`` (the module docstring says how). ``text_known`` False: the rows
    came from a table without text columns (``ItemVectors.text`` is None)."""
    D = rows.seg.shape[1]
    item, content, text, segs, seg_row, spans = [], [], [], [], [], []
    starts = np.concatenate([[0], np.cumsum(rows.nseg)])
    for r, err in enumerate(rows.errors):
        if err:
            continue
        s = rows.seg[starts[r] : starts[r + 1]]
        sp = rows.spans[starts[r] : starts[r + 1]]
        t = rows.text[r] if rows.has_text[r] else None
        c = _content(s, sp) if len(s) else np.zeros(D, np.float32)
        if not len(s):  # served from its text alone: one search "segment" without a time
            v = t
            sv, sp = t[None], np.zeros((1, 2))
        elif t is None:
            v, sv = c, s
        else:
            v = _mix(c[None], t, text_weight)[0]
            sv = v[None] if len(s) == 1 else _mix(s, t, text_weight)
        seg_row += [len(item)] * len(sv)
        item.append(v)
        content.append(c)
        text.append(rows.text[r])
        segs.append(sv)
        spans.append(sp)
    stack = lambda xs, w: np.stack(xs).astype(np.float32, copy=False) if xs else np.zeros((0, w), np.float32)  # noqa: E731
    return ItemVectors(
        stack(item, D),
        stack(content, D),
        stack(text, D) if text_known else None,
        np.concatenate([np.zeros((0, D), np.float32), *segs]).astype(np.float32, copy=False),
        np.array(seg_row, np.int64),
        np.concatenate([np.zeros((0, 2)), *spans]).astype(np.float64, copy=False),
    )


def encode_items(
    model: Any,
    df: pd.DataFrame,
    enc: Any,
    batch_size: int = 16,
    workers: int = 0,
    backend: str = "auto",
    lock: AbstractContextManager[Any] | None = None,
) -> tuple[ItemVectors, list[str]]:
    """The vectors of videos to add to a served bundle, and one error per row of ``df`` ("" where encoded).

    ``df``: ``video_id``, ``abs_path`` ("" for a row served from its text) and the text columns. The same decoding,
    batches of ``batch_size`` rows, and :func:`combine` as ``mmrec encode``, without shards. ``lock`` is held around
    each model call only, not while frames decode.
    """
    cols = text_columns(df, enc)
    paths = ["" if pd.isna(p) else str(p) for p in df["abs_path"]]
    parts = list(embed_rows(model, paths, row_texts(df, cols), enc, batch_size, workers, backend, lock))
    rows = EncodedRows.concat(parts, model.cfg.embed_dim)
    return combine(rows, enc.text_weight, text_known=bool(cols)), rows.errors
