"""Contact sheet: ranked hits drawn as rows of sampled frames, to see what a query returns at a glance.

Frames come from :mod:`multimodal_rec.data.frames` (the one frame loader): a hit whose moment is the whole video
samples the whole clip (:func:`~multimodal_rec.data.frames.read_frames`); a moment inside a long video samples that
span alone (:func:`~multimodal_rec.data.frames.read_span`: no other window decoded, no shot detection rerun). A
clip that is missing or cannot be decoded gets a placeholder row naming the reason; the sheet is still written.
"""

from __future__ import annotations

import logging
import numbers
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from multimodal_rec.bundle import SOURCES_FILE
from multimodal_rec.data.frames import VideoDecodeError, read_frames, read_span
from multimodal_rec.errors import UserError
from multimodal_rec.serving.results import moment_text

LOG = logging.getLogger(__name__)

LABEL_W = 150  # px: the label column left of each row
PAD = 4  # px between frames and around rows
BG, FG, PLACEHOLDER = (255, 255, 255), (20, 20, 20), (225, 225, 225)


@dataclass
class SheetRow:
    """One row: its label lines (rank + id, score, moment, title), the clip to sample (None: not in the catalog) and
    the span to sample it from (None: the whole clip)."""

    label: list[str]
    path: Path | None
    span: tuple[float, float] | None = None


def hit_paths(rec: Any, video_ids: Sequence[str]) -> list[Path | None]:
    """Video file of each id: the absolute paths the bundle was encoded from (``sources.parquet``), else the
    catalog's ``path`` column resolved against the catalog file the bundle was made from."""
    import pandas as pd

    found: dict[str, Path] = {}
    sources = Path(rec.path) / SOURCES_FILE
    if sources.is_file():
        df = pd.read_parquet(sources, columns=["video_id", "abs_path"])
        found = {str(v): Path(p) for v, p in zip(df["video_id"], df["abs_path"], strict=True)}
    elif "path" in rec.catalog.columns:
        base = Path(rec.manifest.get("catalog_source") or Path(rec.path) / "catalog").parent
        for v, p in zip(rec.catalog["video_id"].astype(str), rec.catalog["path"].astype(str), strict=True):
            found[v] = Path(p) if Path(p).is_absolute() else base / p
    return [found.get(str(v)) for v in video_ids]


def rows_for_hits(rec: Any, hits: Sequence[Any]) -> list[SheetRow]:
    """Sheet rows for ranked hits: ``rank. id``, score, the moment (``mm:ss–mm:ss``) and (when the catalog has one)
    the title; a moment inside a longer video is what the row samples."""
    spans = [_partial_span(h) for h in hits]
    rows = []
    for hit, path, span in zip(hits, hit_paths(rec, [h.video_id for h in hits]), spans, strict=True):
        label = [f"{hit.rank}. {hit.video_id}", f"score {hit.score:+.3f}"]
        if hit.moment is not None:
            label.append(moment_text(hit.moment))
        title = hit.metadata.get("title")
        if isinstance(title, str) and title:
            label += textwrap.wrap(title, 26)[:2]
        rows.append(SheetRow(label, path, span))
    return rows


def _partial_span(hit: Any) -> tuple[float, float] | None:
    """The hit's moment when it is part of the video, None when it covers the whole (or is unknown)."""
    m = hit.moment
    if m is None or m.get("end_s") is None:
        return None
    duration = hit.metadata.get("duration_s")
    # the last window ends at frames / fps, which may fall a little short of the catalog's duration
    whole = m["start_s"] <= 0 and isinstance(duration, numbers.Real) and m["end_s"] >= 0.99 * duration
    return None if whole else (float(m["start_s"]), float(m["end_s"]))


def _frames(row: SheetRow, frames: int, size: int) -> tuple[np.ndarray | None, str]:
    """Decoded ``[T, size, size, 3]`` frames of a row (its span, else the whole clip), or None and the reason in
    one line."""
    if row.path is None:
        return None, "no video file recorded for this id"
    try:
        if row.span is not None:
            return read_span(row.path, frames, size, *row.span), ""
        return read_frames(row.path, frames, size), ""
    except (VideoDecodeError, OSError) as e:
        return None, str(e).splitlines()[0] if str(e) else type(e).__name__


def write_contact_sheet(
    rows: Sequence[SheetRow], out: str | Path, frames: int = 6, size: int = 96, title: str | None = None
) -> Path:
    """Draw each row's label and ``frames`` sampled frames of ``size`` px into a PNG at ``out`` (temp + rename).

    Returns the written path. Undecodable clips get a grey placeholder with the reason instead of frames.
    """
    from PIL import Image, ImageDraw, ImageFont

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UserError(f"the contact sheet is a PNG: give a path ending in .png, got {out}")
    if not rows:
        raise UserError("no hits to draw")
    if not 1 <= frames <= 32 or not 16 <= size <= 512:
        raise UserError(f"frames must be in [1, 32] and size in [16, 512] px, got {frames} and {size}")
    if not out.parent.is_dir():
        raise UserError(f"output folder does not exist: {out.parent}")
    font = ImageFont.load_default()
    head = 20 if title else 0
    width = LABEL_W + frames * (size + PAD) + PAD
    row_h = size + 2 * PAD
    sheet = Image.new("RGB", (width, head + len(rows) * row_h), BG)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((PAD, 4), title[:120], fill=FG, font=font)
    for r, row in enumerate(rows):
        y = head + r * row_h + PAD
        for j, line in enumerate(row.label[: max(1, size // 14)]):
            draw.text((PAD, y + 2 + 14 * j), line, fill=FG, font=font)
        x0 = LABEL_W
        clip, reason = _frames(row, frames, size)
        if clip is None:
            LOG.warning("contact sheet row %d: %s", r + 1, reason)
            draw.rectangle([x0, y, width - PAD - 1, y + size - 1], fill=PLACEHOLDER)
            lines = textwrap.wrap(reason, max(20, (width - x0 - 2 * PAD) // 6))
            for j, line in enumerate(lines[: max(1, size // 14)]):
                draw.text((x0 + PAD, y + 4 + 14 * j), line, fill=FG, font=font)
            continue
        for t in range(frames):  # clip: [T, size, size, 3] uint8
            sheet.paste(Image.fromarray(clip[t]), (x0 + t * (size + PAD), y))
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        sheet.save(tmp, format="PNG", optimize=True)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
