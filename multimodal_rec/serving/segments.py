"""The served catalog's second level: segments (time windows of a video), row-aligned with the catalog.

Every catalog row has one or more segments, stored grouped by row and in time order: segment ``j`` has a search
vector ``vectors[j]``, its video's catalog row ``row[j]`` and its span ``spans[j] = (start_s, end_s)`` (``end_s``
NaN when the video's duration is unknown). A bundle without segment files (every bundle made before segments)
is one segment per video: its vector is the video's embedding and its span the whole video. Tombstones and filters
are the catalog's (a segment is live when its video is); compaction drops a removed video's segments with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from multimodal_rec.errors import UserError

LOG = logging.getLogger(__name__)
DURATION_COLUMN = "duration_s"  # catalog column: a video's length in seconds (the end of its whole-video span)


def whole_spans(catalog: pd.DataFrame) -> np.ndarray:
    """``[n, 2]`` spans covering each whole video: ``(0, duration_s)``, NaN end where the catalog has no duration."""
    end = np.full(len(catalog), np.nan)
    if DURATION_COLUMN in catalog.columns:
        end = pd.to_numeric(catalog[DURATION_COLUMN], errors="coerce").to_numpy(dtype=np.float64)
    return np.stack([np.zeros(len(catalog)), end], axis=1)


def flat_index(vectors: np.ndarray) -> Any:
    """An exact inner-product FAISS index over ``vectors`` (segments added to a bundle that had none)."""
    import faiss

    index = faiss.IndexFlatIP(int(vectors.shape[1]))
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def _copy_index(index: Any) -> Any:
    import faiss

    return faiss.deserialize_index(faiss.serialize_index(index))


@dataclass
class SegmentTable:
    """Segment vectors, rows and spans; ``index`` searches ``vectors`` (None when every video is one segment: text
    search then runs over the video index, as before segments). Replaced whole by a change, never edited in place
    (only its index is appended to, under the catalog's write lock)."""

    vectors: np.ndarray  # [S, D] float32 search vectors
    row: np.ndarray  # [S] int64 catalog row of each segment, nondecreasing
    spans: np.ndarray  # [S, 2] float64 start_s, end_s
    n_rows: int  # catalog rows
    index: Any = None
    mapped: bool = False  # the index is memory-mapped (read-only): a change copies it
    content: np.ndarray | None = None  # [S, D] raw video-tower vectors (incremental encoding reuses them); None:
    # not known (every video one segment: its content vector; else not kept)
    bounds: np.ndarray = field(init=False)  # [n_rows + 1]: row r's segments are bounds[r]:bounds[r + 1]

    def __post_init__(self) -> None:
        self.bounds = np.searchsorted(self.row, np.arange(self.n_rows + 1), side="left")
        counts = np.diff(self.bounds)
        self.multi = bool(len(counts) and counts.max() > 1)  # some video has more than one segment
        self.max_per_video = int(counts.max()) if len(counts) else 1
        if self.multi and self.index is None:
            self.index = flat_index(self.vectors)
        if not self.multi:
            self.index, self.mapped, self.content = None, False, None

    def __len__(self) -> int:
        return len(self.row)

    def of_row(self, r: int) -> slice:
        """The segments of catalog row ``r``."""
        return slice(int(self.bounds[r]), int(self.bounds[r + 1]))

    def mask(self, video_mask: np.ndarray | None) -> np.ndarray | None:
        """A video mask (live and passing rows) as a segment mask: a segment passes when its video does."""
        return None if video_mask is None else video_mask[self.row]

    def frame(self, video_ids: list[str]) -> pd.DataFrame:
        """``video_id, start_s, end_s, row``: one line per segment (what ``Recommender.segments`` shows)."""
        ids = np.asarray(video_ids, dtype=object)[self.row] if len(self.row) else np.array([], dtype=object)
        return pd.DataFrame({"video_id": ids, "start_s": self.spans[:, 0], "end_s": self.spans[:, 1], "row": self.row})

    def appended(
        self, new: NewRows, n_new: int, video_content: np.ndarray | None = None, embeddings: np.ndarray | None = None
    ) -> tuple[SegmentTable, np.ndarray | None]:
        """A table with the segments of ``n_new`` new catalog rows appended (``new.seg_row`` counted from 0 for the
        first new row), and the vectors its index still needs (add them under the write lock; None: already added).
        ``video_content``: the served rows' content vectors (a whole-video segment's raw vector); ``embeddings``:
        every row's item vectors after the add (still one segment per video: they are the segment vectors, no copy).

        The index is the same object (appended to in place later) unless it had to be copied (memory-mapped) or
        made (the first video with several segments): then it is private and filled here.
        """
        rows = np.asarray(new.seg_row, dtype=np.int64) + self.n_rows
        if len(rows) and (np.any(np.diff(rows) < 0) or rows[0] < self.n_rows or rows[-1] >= self.n_rows + n_new):
            raise ValueError("segment rows must be grouped by video, in catalog order")
        if len(np.unique(rows)) != n_new:
            raise ValueError("every added video needs at least one segment")
        all_rows = np.concatenate([self.row, rows])
        all_spans = np.vstack([self.spans, np.asarray(new.spans, dtype=np.float64).reshape(-1, 2)])
        if embeddings is not None and not self.multi and len(rows) == n_new:  # still one segment per video
            return SegmentTable(embeddings, all_rows, all_spans, self.n_rows + n_new), None
        vectors = np.vstack([self.vectors, new.seg_vectors]).astype(np.float32, copy=False)
        out = SegmentTable(vectors, all_rows, all_spans, self.n_rows + n_new, self.index, self.mapped)
        if not out.multi:
            return out, None
        old_raw = self.content
        if old_raw is None and not self.multi and video_content is not None:
            old_raw = np.asarray(video_content)[self.row]
        if old_raw is not None and new.seg_content is not None:
            out.content = np.vstack([old_raw, new.seg_content]).astype(np.float32, copy=False)
        if out.index is not self.index:  # just made over every vector
            return out, None
        if self.mapped:
            LOG.info("copying the memory-mapped segment index into memory before changing it")
            out.index, out.mapped = _copy_index(self.index), False
            out.index.add(np.ascontiguousarray(vectors[len(self.row) :]))
            return out, None
        return out, np.ascontiguousarray(vectors[len(self.row) :])

    def compacted(self, alive: np.ndarray) -> SegmentTable:
        """The segments of the ``alive`` rows, renumbered to the compacted catalog; the index is emptied and
        refilled (keeping its training), or dropped when every remaining video is one segment."""
        keep = alive[self.row]
        new_row = (np.cumsum(alive) - 1)[self.row[keep]]
        vectors = np.ascontiguousarray(self.vectors[keep], dtype=np.float32)
        index = None
        if self.index is not None:
            index = _copy_index(self.index)
            index.reset()
            index.add(vectors)
        raw = None if self.content is None else np.ascontiguousarray(self.content[keep])
        return SegmentTable(vectors, new_row.astype(np.int64), self.spans[keep], int(alive.sum()), index, content=raw)


@dataclass
class NewRows:
    """What an added batch brings besides its catalog rows and item vectors: segments (rows counted from 0 for the
    first new video) and the content / text vectors (None: one whole-video segment each, unknown parts)."""

    seg_vectors: np.ndarray | None = None
    seg_row: np.ndarray | None = None
    spans: np.ndarray | None = None
    content: np.ndarray | None = None
    text: np.ndarray | None = None
    seg_content: np.ndarray | None = None  # [S, D] raw video-tower vectors of the segments (None: not known)
    raw_exact: np.ndarray | None = None  # [n] bool: False where seg_content only stands in (None: all exact)

    def complete(self, xb: np.ndarray, rows: pd.DataFrame) -> NewRows:
        """These parts, or without segments one whole-video segment per new catalog row (``rows``), its vector and
        raw vector the video's (``xb``, or its content)."""
        if self.seg_vectors is not None:
            return self
        raw = xb if self.content is None else self.content
        return replace(self, seg_vectors=xb, seg_row=np.arange(len(rows)), spans=whole_spans(rows), seg_content=raw)

    def reusable(self, stats: list[int]) -> list[int]:
        """File stats (size or mtime) as ``sources`` records them: -1 where the raw segment vectors are not known,
        so a later incremental encode never reuses them."""
        if self.raw_exact is None:
            return stats
        return [s if ok else -1 for s, ok in zip(stats, self.raw_exact, strict=True)]

    def durations(self, n: int) -> np.ndarray:
        """Each of the ``n`` new videos' length: the end of its last segment (0: no video file; NaN: unknown)."""
        out = np.full(n, np.nan)
        np.fmax.at(out, np.asarray(self.seg_row, dtype=np.int64), np.asarray(self.spans, dtype=np.float64)[:, 1])
        return out


def raw_segments(
    seg_vectors: np.ndarray, seg_row: np.ndarray, content: np.ndarray, text: Any, weight: float
) -> tuple[np.ndarray, np.ndarray]:
    """The raw video-tower vectors of freshly encoded segments, as far as the search vectors tell them: a
    one-segment video's is its content vector, a segment of a video without text (or with ``text_weight`` 0) its
    search vector. A video with several segments mixed with its text cannot be inverted: its search vectors stand
    in, and ``exact[i]`` (per video) is False, so its source is recorded as not reusable (encoded again later)."""
    seg_row = np.asarray(seg_row, dtype=np.int64)
    one = np.bincount(seg_row, minlength=len(content))[seg_row] == 1
    has_text = np.zeros(len(content), bool) if text is None or weight <= 0 else np.abs(np.asarray(text)).sum(1) > 0
    exact = np.ones(len(content), bool)
    exact[seg_row[~one & has_text[seg_row]]] = False
    raw = np.array(seg_vectors, dtype=np.float32)
    raw[one] = np.asarray(content)[seg_row[one]]
    return raw, exact


def grown(
    old: np.ndarray | None, new: np.ndarray | None, old_fill: Callable[[], Any], new_fill: Callable[[], Any]
) -> np.ndarray | None:
    """A row-aligned optional array after an add: None while neither side has it, else both sides stacked (the
    side without it filled in: content = the item vectors, text = zeros)."""
    if old is None and new is None:
        return None
    parts = [old if old is not None else old_fill(), new if new is not None else new_fill()]
    return np.vstack(parts).astype(np.float32, copy=False)


def segment_table(
    catalog: pd.DataFrame,
    embeddings: np.ndarray,
    segments: pd.DataFrame | None = None,
    vectors: np.ndarray | None = None,
    index: Any = None,
    mapped: bool = False,
    content: np.ndarray | None = None,
) -> SegmentTable:
    """The segment table of a catalog: from a bundle's ``segments`` frame (``video_id, start_s, end_s`` and
    optionally ``row``) and ``vectors`` ``[S, D]``, or one whole-video segment per row (its embedding) without them.

    A video the frame lacks gets its whole-video segment; segments naming no served video are a UserError.
    """
    n = len(catalog)
    whole = SegmentTable(embeddings, np.arange(n, dtype=np.int64), whole_spans(catalog), n)
    if segments is None:
        return whole
    if vectors is None or len(vectors) != len(segments) or vectors.shape[1] != embeddings.shape[1]:
        raise UserError("segments and segment embeddings differ in size (or from the video embeddings' width)")
    if "row" in segments.columns:
        rows = segments["row"].to_numpy(dtype=np.int64)
    else:
        row_of = {v: i for i, v in enumerate(catalog["video_id"].astype(str))}
        rows = segments["video_id"].astype(str).map(row_of).fillna(-1).to_numpy(dtype=np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= n):
        raise UserError("segments name videos that are not in the catalog")
    spans = segments[["start_s", "end_s"]].to_numpy(dtype=np.float64)
    missing = np.setdiff1d(np.arange(n), rows)
    if len(missing) or np.any(np.diff(rows) < 0):  # fill in whole-video segments, then group by row (stable)
        rows = np.concatenate([rows, missing])
        vectors = np.vstack([vectors, np.asarray(embeddings)[missing]])
        spans = np.vstack([spans, whole.spans[missing]])
        order = np.argsort(rows, kind="stable")
        rows, vectors, spans, index = rows[order], vectors[order], spans[order], None
        content = None if content is None or len(missing) else np.asarray(content)[order]  # filled rows: unknown
    return SegmentTable(np.asarray(vectors, dtype=np.float32), rows, spans, n, index, mapped, content)


def bundle_parts(
    table: SegmentTable, video_ids: list[str], content: np.ndarray | None, text: np.ndarray | None
) -> dict[str, Any]:
    """The ``Bundle`` fields of a compacted catalog's segments and vector parts: the segment files only when some
    video has several segments (a bundle of whole-video segments is written as before segments)."""
    parts: dict[str, Any] = {"content": content, "text": text}
    if not table.multi:
        return {**parts, "segments": None, "segment_embeddings": None, "segment_index": None, "segment_content": None}
    frame, vectors = table.frame(video_ids), np.ascontiguousarray(table.vectors, dtype=np.float32)
    seg = {"segments": frame, "segment_embeddings": vectors, "segment_index": table.index}
    return {**parts, **seg, "segment_content": table.content}
