"""The served catalog: rows, vectors and index kept aligned, searched under a read lock, changed under a write lock.

Row ``i`` of the catalog, of the embeddings, of ``xb`` and of the FAISS index is the same video. Removed videos
stay in the index as tombstones (every search skips them through the same ID selector as metadata filters) until
a compaction (:meth:`CatalogState.compacted`, what ``Recommender.save`` writes) drops them; added videos are
appended to the index without a rebuild. A change builds its new arrays first and swaps them in under the write
lock, so no search ever sees a half-updated catalog or index. Segments (:mod:`~multimodal_rec.serving.segments`)
are a second level kept aligned with the rows: a row's segments live and die with it, and text search ranks videos
by their best segment (:mod:`~multimodal_rec.serving.moments`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from multimodal_rec.bundle import file_stats
from multimodal_rec.errors import UserError
from multimodal_rec.index.search import search_masked
from multimodal_rec.model.prior import PRIOR_COLUMN, index_vectors, index_view
from multimodal_rec.serving.filters import Filters, filter_mask
from multimodal_rec.serving.locks import RWLock
from multimodal_rec.serving.moments import (
    attach_moments,
    complete_hits,
    moment,
    rank_segments,
    rank_videos,
)
from multimodal_rec.serving.records import column_readers, native
from multimodal_rec.serving.results import Hit
from multimodal_rec.serving.segments import DURATION_COLUMN, NewRows, SegmentTable, grown, segment_table

LOG = logging.getLogger(__name__)
# A video's text, for a history item that names it by id: the first of these columns with a non-blank value.
TEXT_COLUMNS = ("title", "caption", "description")
_MAX_NAMED = 5  # unknown ids named in one error line


@dataclass(frozen=True)
class ResolvedHistory:
    """A history as the user tower reads it: ``texts[i]`` stands for the caller's ``items[i]`` (oldest first).

    ``resolved``: video id -> the text it was read as (items that are served video ids); ``unknown``: items left
    out (with ``history_ids``: every item that is not a served id; always: a served id whose video has no text).
    """

    items: list[str]
    texts: list[str]
    resolved: dict[str, str]
    unknown: list[str]

    def to_dict(self) -> dict[str, Any]:
        """``{"resolved": {id: text}, "unknown_ids": [...]}``: what the CLI and HTTP answers report."""
        return {"resolved": dict(self.resolved), "unknown_ids": list(self.unknown)}


@dataclass
class Snapshot:
    """The live rows only (tombstones compacted out): what a bundle written now holds."""

    catalog: pd.DataFrame
    embeddings: np.ndarray
    index: Any
    sources: pd.DataFrame
    skipped: list[dict[str, str]]
    compacted: bool  # rows were dropped: ``index`` is a new index over the live rows
    segments: SegmentTable | None = None
    content: np.ndarray | None = None  # [n, D] video-tower vectors (None: not recorded)
    text: np.ndarray | None = None  # [n, D] text-tower vectors of the video's text (zeros: none)


class CatalogState:
    """Catalog rows, embeddings, index and the maps over them (live id -> row, title -> rows, tombstones).

    ``catalog``, ``embeddings``, ``xb`` (what the index holds: embeddings plus the prior column), ``index``,
    ``video_ids``, ``sources`` and ``skipped`` are replaced together by a change, never edited in place (only
    appended to), so a reader that took them under :meth:`search`'s read lock sees one whole state.
    """

    def __init__(
        self,
        catalog: pd.DataFrame,
        embeddings: np.ndarray,
        index: Any,
        *,
        popularity_prior: bool,
        sources: pd.DataFrame | None = None,
        skipped: list[dict[str, str]] | None = None,
        mapped: bool = False,
        segments: SegmentTable | None = None,
        content: np.ndarray | None = None,
        text: np.ndarray | None = None,
    ) -> None:
        self.popularity_prior = popularity_prior
        self.mapped = mapped  # the index is memory-mapped (read-only): a change copies it into memory first
        self.skipped = list(skipped or [])
        self._rw = RWLock()  # searches read, changes write
        self._mutating = threading.Lock()  # one change at a time (it may encode or write files for a while)
        self._set(catalog, embeddings, index, sources, segments, content, text)

    def _set(
        self,
        catalog: pd.DataFrame,
        embeddings: np.ndarray,
        index: Any,
        sources: pd.DataFrame | None,
        segments: SegmentTable | None = None,
        content: np.ndarray | None = None,
        text: np.ndarray | None = None,
    ) -> None:
        """Every row-aligned structure, rebuilt from the catalog (all rows live)."""
        self.catalog, self.embeddings, self.index = catalog, embeddings, index
        self.segments = segments if segments is not None else segment_table(catalog, embeddings)
        self.content, self.text = content, text
        self.xb = index_view(embeddings, catalog, self.popularity_prior)  # no copy: the embeddings stay mapped
        self.video_ids: list[str] = list(catalog["video_id"].astype(str))
        self._row = {v: i for i, v in enumerate(self.video_ids)}  # live ids only
        self._meta_cols = [c for c in catalog.columns if c != "video_id"]
        self._columns = column_readers(catalog, self._meta_cols)
        self._alive = np.ones(len(catalog), dtype=bool)
        self._by_title: dict[str, list[int]] = {}  # exact title (surrounding spaces stripped) -> rows
        if "title" in catalog.columns:
            for i, t in enumerate(catalog["title"]):
                if isinstance(t, str):
                    self._by_title.setdefault(t.strip(), []).append(i)
        if sources is None:
            sources = pd.DataFrame({"video_id": self.video_ids})
        src = sources.drop_duplicates("video_id").set_index("video_id").reindex(self.video_ids)
        self.sources = pd.DataFrame(
            {
                "video_id": self.video_ids,
                "abs_path": src["abs_path"].fillna("").astype(str).to_numpy() if "abs_path" in src else "",
                "size": src["size"].fillna(-1).astype(np.int64).to_numpy() if "size" in src else -1,
                "mtime_ns": src["mtime_ns"].fillna(-1).astype(np.int64).to_numpy() if "mtime_ns" in src else -1,
            }
        )
        if DURATION_COLUMN in src:  # the measured length (incremental encoding needs it)
            self.sources[DURATION_COLUMN] = src[DURATION_COLUMN].to_numpy(dtype=np.float64)

    def __len__(self) -> int:
        """Live videos (added ones included, removed ones not)."""
        return len(self._row)

    @property
    def segment_frame(self) -> pd.DataFrame:
        """``video_id, start_s, end_s, row``: every row's segments in time order (removed videos' too, until saved)."""
        return self.segments.frame(self.video_ids)

    @property
    def row_of(self) -> Mapping[str, int]:
        """Live video id -> its row (removed videos are absent); a read-only view."""
        return MappingProxyType(self._row)

    # --- searching ----------------------------------------------------------------------------------------------
    def search(
        self,
        xq: np.ndarray,
        k: int,
        exclude: Iterable[str] = (),
        filters: Filters | None = None,
        seen: Sequence[str] = (),
        passing: np.ndarray | None = None,
    ) -> list[list[Hit]]:
        """Top-``k`` live rows for each index-ready query, passing ``filters``, skipping the ``exclude`` ids and
        the videos ``seen`` names; ``passing`` is ``filter_mask(catalog, filters)`` if the caller has it."""
        with self._rw.read():
            excluded = [self._row[v] for v in exclude if v in self._row] + self._seen_rows(seen)
            mask = self._mask(filters, excluded, passing)
            D, I = search_masked(self.index, self.xb, xq, k, mask)  # noqa: E741
            return [self._hits(d, i) for d, i in zip(D, I, strict=True)]

    def search_text(
        self,
        xq: np.ndarray,
        k: int,
        filters: Filters | None = None,
        passing: np.ndarray | None = None,
        bare: bool = False,
    ) -> list[list[Hit]]:
        """Top-``k`` live videos passing ``filters`` for each text query ``xq`` (index-ready, 0 in a prior column),
        each hit with its moment. With segments (some video has several) a video scores its best segment;
        otherwise the video index answers, exactly as :meth:`search` (whole-video moments). ``bare``: id, score and
        rank only (no metadata, no moment: candidates that :meth:`completed` finishes once they make the cut)."""
        with self._rw.read():
            return self._text_hits(xq, k, self._mask(filters, [], passing), bare)

    def _text_hits(self, xq: np.ndarray, k: int, mask: np.ndarray | None, bare: bool = False) -> list[list[Hit]]:
        seg = self.segments
        q = np.ascontiguousarray(xq[:, : seg.vectors.shape[1]])  # [nq, D]: the prior column (0) dropped
        ranked = rank_videos(seg, q, k, mask) if seg.multi else self._ranked(xq, k, mask)
        hits = [[Hit(self.video_ids[r], s, n) for n, (r, s) in enumerate(row, 1)] for row in ranked]
        return hits if bare else complete_hits(seg, self._row, self._record, hits, xq)

    def completed(self, hits: list[list[Hit]], xq: np.ndarray | None) -> list[list[Hit]]:
        """Bare hits (``bare`` rankings, fused and cut to ``k``) with metadata and moments
        (:func:`~multimodal_rec.serving.moments.complete_hits`)."""
        with self._rw.read():
            return complete_hits(self.segments, self._row, self._record, hits, xq)

    def search_moments(
        self, xq: np.ndarray, k: int, filters: Filters | None = None, passing: np.ndarray | None = None
    ) -> list[list[Hit]]:
        """Top-``k`` live segments of videos passing ``filters`` for each text query: one hit per segment (a video
        may come back several times), its moment the segment's span. One segment per video: :meth:`search_text`."""
        with self._rw.read():
            seg, mask = self.segments, self._mask(filters, [], passing)
            if not seg.multi:
                return self._text_hits(xq, k, mask)
            out = []
            for hits in rank_segments(seg, np.ascontiguousarray(xq[:, : seg.vectors.shape[1]]), k, mask):
                found = [(int(seg.row[j]), s, seg.spans[j]) for j, s in hits]
                out.append([self._hit(r, s, n, moment(sp[0], sp[1], s)) for n, (r, s, sp) in enumerate(found, 1)])
            return out

    def with_moments(self, hits: list[list[Hit]], xq: np.ndarray | None = None) -> list[list[Hit]]:
        """Each query's ``hits`` from any ranking (lexical, fused), those without a moment given one: for the query
        vector ``xq[i]`` its video's best moment, without ``xq`` (no query vector) the whole video, score None."""
        with self._rw.read():
            return attach_moments(self.segments, self._row, hits, xq)

    def _ranked(self, xq: np.ndarray, k: int, mask: np.ndarray | None) -> list[list[tuple[int, float]]]:
        """Each query's top-``k`` rows of the video index among ``mask``: ``(row, score)``, best first."""
        D, I = search_masked(self.index, self.xb, xq, k, mask)  # noqa: E741
        return [[(int(r), float(s)) for s, r in zip(d, i, strict=True) if r >= 0] for d, i in zip(D, I, strict=True)]

    def _hit(self, row: int, score: float, rank: int, where: dict[str, Any] | None = None) -> Hit:
        return Hit(self.video_ids[row], score, rank, self._record(row), moment=where)

    def _record(self, row: int) -> dict[str, Any]:
        """The row's metadata, as ``catalog.to_dict("records")[row]`` (Python scalars) without building every row."""
        return {c: native(col[row]) for c, col in self._columns.items()}

    def _hits(self, D: np.ndarray, I: np.ndarray, bare: bool = False) -> list[Hit]:  # noqa: E741
        pairs = [(int(r), float(s)) for s, r in zip(D, I, strict=True) if r >= 0]
        if bare:
            return [Hit(self.video_ids[r], s, n) for n, (r, s) in enumerate(pairs, 1)]
        return [self._hit(r, s, n) for n, (r, s) in enumerate(pairs, 1)]

    def rank_rows(
        self,
        ranker: Callable[[pd.DataFrame, np.ndarray | None], tuple[np.ndarray, np.ndarray]],
        filters: Filters | None = None,
        passing: np.ndarray | None = None,
        bare: bool = False,
    ) -> list[list[Hit]]:
        """Hits from another ranker over the rows (e.g. the lexical index), masked exactly as :meth:`search` is
        (filters, tombstones): ``ranker(catalog, mask)`` returns FAISS-style ``D, I`` over ``catalog``'s rows; it
        runs under the read lock, so the catalog, the mask and the hits are of one state. ``bare``: as in
        :meth:`search_text`."""
        with self._rw.read():
            D, I = ranker(self.catalog, self._mask(filters, [], passing))  # noqa: E741
            return [self._hits(d, i, bare) for d, i in zip(D, I, strict=True)]

    def _mask(self, filters: Filters | None, excluded: list[int], passing: np.ndarray | None) -> np.ndarray | None:
        """Rows a search may return (live, passing ``filters``, not ``excluded``); None when every row may.

        ``passing`` is recomputed only when the catalog grew since the caller computed it (an add from another
        thread).
        """
        if passing is None or len(passing) != len(self.catalog):
            passing = filter_mask(self.catalog, filters)
        mask = None if passing is None else passing.copy()
        if len(self._row) < len(self._alive):  # tombstones
            mask = self._alive.copy() if mask is None else mask & self._alive
        if excluded:
            mask = self._alive.copy() if mask is None else mask
            mask[excluded] = False
        return mask

    def _seen_rows(self, history: Sequence[str]) -> list[int]:
        """Rows a history names: an item equal (surrounding spaces aside, case-sensitive) to an id or a title."""
        rows: list[int] = []
        for item in history:
            key = item.strip()
            row = self._row.get(key)
            if row is not None:
                rows.append(row)
            rows.extend(self._by_title.get(key, ()))
        return rows

    def resolve_history(self, history: Sequence[str], ids: bool = False) -> ResolvedHistory:
        """Read each history item that is exactly (surrounding spaces aside, case-sensitive, as seen items are
        matched) a served video id as that video's text (:data:`TEXT_COLUMNS`); other items stay free text unless
        ``ids`` (every item is meant as an id: an unknown one is left out). UserError when nothing is left."""
        items: list[str] = []
        texts: list[str] = []
        resolved: dict[str, str] = {}
        unknown: dict[str, None] = {}  # ordered, distinct
        with self._rw.read():
            for item in history:
                key = item.strip()
                row = self._row.get(key)
                text = None if row is None else self._video_text(row)
                if text is not None:
                    resolved[key] = text
                elif row is not None or ids:  # an id with no text, or not an id when only ids were given
                    unknown[key] = None
                    continue
                items.append(item)
                texts.append(item if text is None else text)
        if not texts:
            named = ", ".join(repr(v) for v in list(unknown)[:_MAX_NAMED])
            more = f" and {len(unknown) - _MAX_NAMED} more" if len(unknown) > _MAX_NAMED else ""
            raise UserError(f"no usable history item (not a served video with a title or caption): {named}{more}")
        return ResolvedHistory(items, texts, resolved, list(unknown))

    def _video_text(self, row: int) -> str | None:
        """The video's text (the first non-blank of :data:`TEXT_COLUMNS`), None if it has none."""
        rec = self._record(row)
        for col in TEXT_COLUMNS:
            value = rec.get(col)
            if isinstance(value, str) and value.strip():
                return value.strip()
        return None

    # --- changing -----------------------------------------------------------------------------------------------
    def check_new_ids(self, ids: Iterable[str]) -> None:
        """UserError if any of ``ids`` is served already."""
        taken = next((v for v in ids if v in self._row), None)
        if taken is not None:
            raise UserError(f"video id {taken!r} is already in the catalog (remove it first to replace it)")

    def add(
        self,
        df: pd.DataFrame,
        xb: np.ndarray,
        skipped: list[dict[str, str]],
        files_read: bool,
        extra: NewRows | None = None,
    ) -> list[str]:
        """Append videos (``df``: checked catalog rows with ``abs_path``; ``xb``: their unit vectors); returns their
        ids. ``files_read``: the vectors came from the files now on disk, so their size and mtime are recorded
        (otherwise -1: a later ``mmrec encode`` must not reuse these vectors). ``extra``: their segments and vector
        parts (without: one segment per video, its vector ``xb``, spanning ``[0, duration_s]``)."""
        df = df.assign(**{PRIOR_COLUMN: 0})  # no popularity yet
        if "abs_path" not in df.columns:
            df["abs_path"] = ""
        sizes, mtimes = file_stats(list(df["abs_path"])) if files_read else ([-1] * len(df), [-1] * len(df))
        rows = df.drop(columns=["abs_path"]).reindex(columns=self.catalog.columns)
        extra = (extra or NewRows()).complete(xb, rows)
        sizes, mtimes = extra.reusable(sizes), extra.reusable(mtimes)
        src = pd.DataFrame({"video_id": df["video_id"], "abs_path": df["abs_path"], "size": sizes, "mtime_ns": mtimes})
        src[DURATION_COLUMN] = extra.durations(len(rows))
        vectors = index_vectors(xb, rows, self.popularity_prior)
        with self._mutating:  # the state only changes under this lock: build the new arrays, then swap them in
            self.check_new_ids(rows["video_id"])  # again: another thread may have added them meanwhile
            index = self._writable_index()
            private = index is not self.index  # a fresh copy: filled before searches have to wait
            if private:
                index.add(np.ascontiguousarray(vectors))
            catalog = pd.concat([self.catalog, rows], ignore_index=True)
            embeddings = np.vstack([self.embeddings, xb]).astype(np.float32, copy=False)  # O(n): add in batches
            xb_all = np.vstack([self.xb, vectors]).astype(np.float32, copy=False)
            sources = pd.concat([self.sources, src], ignore_index=True)
            alive = np.concatenate([self._alive, np.ones(len(rows), dtype=bool)])
            records = rows[self._meta_cols].to_dict("records")
            video_content = self.embeddings if self.content is None else self.content
            segments, seg_pending = self.segments.appended(extra, len(rows), video_content, embeddings)
            content = grown(self.content, extra.content, lambda: self.embeddings, lambda: xb)
            text = grown(self.text, extra.text, lambda: np.zeros_like(self.embeddings), lambda: np.zeros_like(xb))
            with self._rw.write():
                if not private:
                    index.add(np.ascontiguousarray(vectors))
                if seg_pending is not None:
                    segments.index.add(seg_pending)
                self.segments, self.content, self.text = segments, content, text
                n0 = len(self.video_ids)
                self.index, self.mapped = index, False
                self.catalog, self.embeddings, self.xb = catalog, embeddings, xb_all
                self._columns = column_readers(catalog, self._meta_cols)
                self.sources, self._alive = sources, alive
                self.skipped.extend(skipped)
                for i, (vid, rec) in enumerate(zip(rows["video_id"], records, strict=True)):
                    self.video_ids.append(vid)
                    self._row[vid] = n0 + i
                    title = rec.get("title")
                    if isinstance(title, str):
                        self._by_title.setdefault(title.strip(), []).append(n0 + i)
        return list(rows["video_id"])

    def _writable_index(self) -> Any:
        """The index itself, or an in-memory copy of a memory-mapped one (``add`` on a mapped index aborts)."""
        if not self.mapped:
            return self.index
        import faiss

        LOG.info("copying the memory-mapped index into memory before changing it")
        return faiss.deserialize_index(faiss.serialize_index(self.index))

    def remove(self, ids: list[str]) -> int:
        """Tombstone ``ids`` (distinct, all served, else UserError and nothing changes); returns how many."""
        with self._mutating:
            unknown = next((v for v in ids if v not in self._row), None)
            if unknown is not None:
                raise UserError(f"cannot remove {unknown!r}: no such video id in the catalog")
            with self._rw.write():
                for vid in ids:
                    row = self._row.pop(vid)
                    self._alive[row] = False
                    title = self._record(row).get("title")
                    if isinstance(title, str):
                        rows = self._by_title.get(title.strip(), [])
                        if row in rows:
                            rows.remove(row)
        return len(ids)

    # --- compaction (saving) ------------------------------------------------------------------------------------
    def mutation(self) -> threading.Lock:
        """The lock every change holds: hold it around :meth:`compacted` ... :meth:`adopt` (a save)."""
        return self._mutating

    def compacted(self) -> Snapshot:
        """The live rows, tombstones dropped: the index is emptied and the live vectors added again, which keeps its
        training (IVF centroids, PQ codebooks: the same codes as before); HNSW rebuilds its graph. Call under
        :meth:`mutation`."""
        import faiss

        keep = np.flatnonzero(self._alive)
        compact = len(keep) < len(self._alive)
        index = self.index
        if compact:
            index = faiss.deserialize_index(faiss.serialize_index(self.index))
            index.reset()
            index.add(np.ascontiguousarray(self.xb[keep]))
        catalog = self.catalog.iloc[keep].reset_index(drop=True)
        embeddings = np.ascontiguousarray(self.embeddings[keep], dtype=np.float32)
        sources = self.sources.iloc[keep].reset_index(drop=True)
        segments = self.segments.compacted(self._alive) if compact else self.segments
        content, text = (None if a is None else np.ascontiguousarray(a[keep]) for a in (self.content, self.text))
        return Snapshot(catalog, embeddings, index, sources, list(self.skipped), compact, segments, content, text)

    def adopt(self, snap: Snapshot) -> None:
        """Switch to a :meth:`compacted` snapshot, under the write lock (call it still under :meth:`mutation`)."""
        if not snap.compacted:
            return
        with self._rw.write():
            self._set(snap.catalog, snap.embeddings, snap.index, snap.sources, snap.segments, snap.content, snap.text)
            self.mapped = False
