"""Incremental encoding: the raw encoder outputs an existing bundle already holds for unchanged catalog rows.

A row is reused when the previous bundle was made by the same model with the same segment settings
(``encode.segment_seconds``, ``encode.max_segments``) and the row's video id, path, file size and mtime are
unchanged: its segments' raw video-tower vectors and spans come back as they were. Its text vector is reused when
its text (the joined text columns, each bundle's own ``encode.text_columns``) is unchanged too; otherwise it is
encoded again, here (text is cheap). The item and search vectors are then recomputed by
:func:`~multimodal_rec.encoding.items.combine`, so a changed ``text_weight`` applies to every row. A bundle made
before segments existed (no ``encode`` in its manifest) reuses nothing: its videos were never cut into segments.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multimodal_rec.bundle import (
    CATALOG_FILE,
    CONTENT_FILE,
    DURATION_COLUMN,
    EMBEDDINGS_FILE,
    MANIFEST,
    SEGMENT_CONTENT_FILE,
    SEGMENTS_FILE,
    SOURCES_FILE,
    TEXT_FILE,
    read_manifest,
)
from multimodal_rec.encoding.embed import EncodedRows, embed_texts
from multimodal_rec.encoding.items import row_texts
from multimodal_rec.errors import UserError

LOG = logging.getLogger(__name__)


def source_key(video_id: Any, path: Any, size: Any, mtime_ns: Any) -> tuple[str, str, int, int]:
    """What identifies the content of a catalog row: same key, same file, same embedding."""
    return str(video_id), str(path), int(size), int(mtime_ns)


def source_keys(df: pd.DataFrame) -> list[tuple[str, str, int, int]]:
    cols = (df["video_id"], df["abs_path"], df["size"], df["mtime_ns"])
    return [source_key(*k) for k in zip(*cols, strict=True)]


def same_segments(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two ``encode`` settings cut every video the same way."""
    cut = lambda e: (max(0.0, float(e["segment_seconds"])), int(e["max_segments"]), bool(e.get("shots")))  # noqa: E731
    return cut(a) == cut(b)


def _raw_segments(out: Path, prev: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(raw segment vectors [S, D], spans [S, 2], first segment of each previous row [N + 1]) of a bundle; a row
    without a video file (served from its text) has none."""
    has_file = prev["abs_path"].astype(str).to_numpy() != ""
    if (out / SEGMENTS_FILE).is_file():
        segs = pd.read_parquet(out / SEGMENTS_FILE)
        row_of = {v: i for i, v in enumerate(prev["video_id"])}
        rows = np.array([row_of[v] for v in segs["video_id"]], np.int64)
        keep = has_file[rows]  # a text-only video's one search "segment" is no video segment
        counts = np.bincount(rows[keep], minlength=len(prev))
        spans = segs[["start_s", "end_s"]].to_numpy(np.float64)[keep]
        return np.load(out / SEGMENT_CONTENT_FILE)[keep], spans, np.concatenate([[0], np.cumsum(counts)])
    content = out / CONTENT_FILE
    vectors = np.load(content if content.is_file() else out / EMBEDDINGS_FILE)  # no text: item == content
    dur = prev[DURATION_COLUMN].to_numpy(np.float64)
    spans = np.stack([np.zeros(len(prev)), dur], 1)[has_file]
    return vectors[has_file], spans, np.concatenate([[0], np.cumsum(has_file)])


def _load_previous(out: Path, fingerprint: str, enc: dict[str, Any]) -> tuple[dict[str, Any] | None, set[str]]:
    """(what the previous bundle holds, if it can be reused; the ids it held)."""
    if not (out / MANIFEST).is_file():
        return None, set()
    try:
        manifest = read_manifest(out, verify=True)
        prev = pd.read_parquet(out / SOURCES_FILE)
    except (UserError, OSError, ValueError) as e:
        LOG.warning("not reusing %s: %s", out, e)
        return None, set()
    ids = set(prev["video_id"])
    if manifest.get("model_fingerprint") != fingerprint:
        LOG.info("existing bundle %s was made by another model: encoding everything", out)
        return None, ids
    made = manifest.get("encode")
    if made is None or not same_segments(made, enc):
        LOG.info("existing bundle %s was made with other segment settings: encoding everything", out)
        return None, ids
    if DURATION_COLUMN not in prev.columns or (
        (out / SEGMENTS_FILE).is_file() and not (out / SEGMENT_CONTENT_FILE).is_file()
    ):  # e.g. saved by a writer that kept only the served vectors
        LOG.info("existing bundle %s lacks the raw segment vectors or durations: encoding everything", out)
        return None, ids
    seg, spans, starts = _raw_segments(out, prev)
    catalog = pd.read_parquet(out / CATALOG_FILE)
    texts = row_texts(catalog, [c for c in made["text_columns"] if c in catalog.columns])
    text = np.load(out / TEXT_FILE) if (out / TEXT_FILE).is_file() else None
    return {"prev": prev, "seg": seg, "spans": spans, "starts": starts, "texts": texts, "text": text}, ids


def previous_bundle(
    out: Path,
    fingerprint: str,
    cat: pd.DataFrame,
    texts: list[str],
    enc: dict[str, Any],
    model: Any,
    rebuild: bool = False,
) -> tuple[dict[int, EncodedRows], set[str]]:
    """(catalog row -> its raw outputs kept from an existing bundle, the ids that bundle held). A missing, corrupt,
    other-model or other-segmenting bundle reuses nothing, nor does ``rebuild``. Changed texts of reused rows are
    encoded here."""
    p, ids = _load_previous(out, fingerprint, enc)
    if p is None or rebuild:
        return {}, ids
    D = p["seg"].shape[1]
    row_of = {k: i for i, k in enumerate(source_keys(p["prev"]))}
    reuse: dict[int, EncodedRows] = {}
    stale: list[int] = []
    for r, k in enumerate(source_keys(cat)):
        i = row_of.get(k)
        if i is None or (p["starts"][i] == p["starts"][i + 1] and not texts[r]):  # nothing left to serve it from
            continue
        a, b = p["starts"][i], p["starts"][i + 1]
        same_text = texts[r] == p["texts"][i] and (p["text"] is not None or not texts[r])
        text = p["text"][i : i + 1] if same_text and p["text"] is not None else np.zeros((1, D), np.float32)
        stale += [] if same_text else [r]
        nseg = np.array([b - a], np.int64)
        reuse[r] = EncodedRows([""], nseg, p["seg"][a:b], p["spans"][a:b], text, np.array([bool(texts[r])]))
    if stale:
        LOG.info("%d unchanged videos have a changed text: encoding their texts", len(stale))
        fresh = embed_texts(model, [texts[r] for r in stale if texts[r]])
        for r, t in zip([r for r in stale if texts[r]], fresh, strict=True):
            reuse[r].text = t[None].astype(np.float32)
    return reuse, ids
