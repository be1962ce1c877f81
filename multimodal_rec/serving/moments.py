"""Text search at segment granularity: videos ranked by their best segment, and the moment a query matches.

Numpy in, numpy out. A video's score for a text query is its best segment's score (cosine), so a query that
describes one scene of a long film finds the film even though its mean vector is mostly other scenes. Its *moment*
is the best segment extended over adjacent segments scoring at least ``baseline + 0.5 * (best - baseline)``, the
baseline being the median of the video's segment scores (the full width at half maximum of the score curve);
videos with at most two segments: the best segment alone.

Fetching enough segments: a video has at most ``max_per_video`` segments, so the top ``k * max_per_video`` passing
segments always hold ``k`` distinct videos when ``k`` videos pass. Fewer are fetched first (most queries find ``k``
videos among far fewer segments), and the fetch grows only for the queries still short.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from multimodal_rec.errors import UserError
from multimodal_rec.index.search import exact_search, search_masked
from multimodal_rec.serving.results import Hit
from multimodal_rec.serving.segments import SegmentTable

LOG = logging.getLogger(__name__)
HALF = 0.5  # the moment covers the segments scoring above half the way from the median to the best
FIRST_FETCH = 4  # segments fetched per wanted video at first


def check_moments_mode(mode: Any) -> None:
    """Segment-level hits come from the segment vectors alone: refuse a word-based mode with them (one line)."""
    if mode not in (None, "vector"):
        raise UserError(f"segment-level hits (moments) are ranked by vector only: drop mode {str(mode)[:20]!r}")


def fwhm_span(scores: np.ndarray) -> tuple[int, int]:
    """The moment of one video, as the first and last of its segments (``scores`` in time order): the best segment
    extended over adjacent segments scoring ``>= median + HALF * (best - median)``; the best alone for <= 2."""
    best = int(np.argmax(scores))
    if len(scores) <= 2:
        return best, best
    base = float(np.median(scores))
    threshold = base + HALF * (float(scores[best]) - base)
    first, last = best, best
    while first > 0 and scores[first - 1] >= threshold:
        first -= 1
    while last < len(scores) - 1 and scores[last + 1] >= threshold:
        last += 1
    return first, last


def moment(start_s: float, end_s: float, score: float | None) -> dict[str, Any]:
    """The ``Hit.moment`` dict; an unknown end (NaN: no duration in the catalog) is None, and so is the score of a
    moment no query vector scored (a lexical hit: the whole video)."""
    end = None if not np.isfinite(end_s) else float(end_s)
    return {"start_s": float(start_s), "end_s": end, "score": None if score is None else float(score)}


def video_moment(table: SegmentTable, r: int, q: np.ndarray) -> dict[str, Any]:
    """The moment of catalog row ``r`` for the query vector ``q [D]`` (exact scores of its segments)."""
    seg = table.of_row(r)
    scores = np.asarray(table.vectors[seg], dtype=np.float32) @ q  # [s]
    first, last = fwhm_span(scores)
    spans = table.spans[seg]
    return moment(spans[first, 0], spans[last, 1], float(scores.max()))


def attach_moments(
    table: SegmentTable, row_of: Mapping[str, int], hits: list[list[Hit]], xq: np.ndarray | None
) -> list[list[Hit]]:
    """Give each hit without a moment its video's (``row_of``: live id -> row): its best moment for the query vector
    ``xq[i]`` of its query, or without ``xq`` the whole video with no score."""
    for i, row_hits in enumerate(hits):
        for h in (h for h in row_hits if h.moment is None and h.video_id in row_of):
            h.moment = row_moment(table, row_of[h.video_id], xq, i)
    return hits


def complete_hits(
    table: SegmentTable,
    row_of: Mapping[str, int],
    record: Callable[[int], dict[str, Any]],
    hits: list[list[Hit]],
    xq: np.ndarray | None,
) -> list[list[Hit]]:
    """Bare hits (id, score, rank; fused and cut to ``k``) with ``record(row)`` as metadata and their moment: the best
    for their query's vector ``xq[i]`` where the vector scored the hit, else the whole video. A video no longer live
    in ``row_of`` (removed since it was ranked) is dropped, and the ranks after it close up."""
    out = []
    for i, row_hits in enumerate(hits):
        live = [(h, row_of[h.video_id]) for h in row_hits if h.video_id in row_of]
        done = []
        for n, (h, r) in enumerate(live, 1):
            scored = h.scores is None or h.scores.get("vector") is not None
            where = row_moment(table, r, xq if scored else None, i)
            done.append(dataclasses.replace(h, rank=n, metadata=record(r), moment=where))
        out.append(done)
    return out


def row_moment(table: SegmentTable, r: int, xq: np.ndarray | None, i: int) -> dict[str, Any]:
    """The moment of catalog row ``r`` for query ``i`` of the index-ready ``xq`` (its best moment); without ``xq``
    (no query vector scored the video, e.g. a lexical hit) the whole video, score None."""
    if xq is None:
        first, last = table.spans[table.of_row(r)][[0, -1]]
        return moment(first[0], last[1], None)
    return video_moment(table, r, np.ascontiguousarray(xq[i, : table.vectors.shape[1]]))


def best_videos(D: np.ndarray, I: np.ndarray, row: np.ndarray, k: int) -> list[tuple[int, float]]:  # noqa: E741
    """One query's segment hits (best first) -> its first ``k`` distinct videos ``(row, best segment score)``."""
    seen: dict[int, float] = {}
    for score, j in zip(D, I, strict=True):
        if j < 0:
            continue
        r = int(row[j])
        if r not in seen:
            seen[r] = float(score)
            if len(seen) == k:
                break
    return list(seen.items())


def rank_videos(
    table: SegmentTable, xq: np.ndarray, k: int, video_mask: np.ndarray | None
) -> list[list[tuple[int, float]]]:
    """The top ``k`` videos of each query ``xq [nq, D]`` by their best passing segment: ``(row, score)`` lists.

    ``k`` videos come back whenever ``k`` videos pass ``video_mask`` (None: every row passes): the fetch grows up
    to ``k * max_per_video`` segments, then a query still short (an approximate index that found too few) is
    answered by an exact scan over the passing segments.
    """
    mask = table.mask(video_mask)
    n_videos = table.n_rows if video_mask is None else int(np.count_nonzero(video_mask))
    n_segments = len(table) if mask is None else int(np.count_nonzero(mask))
    want = min(k, n_videos)
    cap = min(k * table.max_per_video, n_segments)
    out: list[list[tuple[int, float]]] = [[] for _ in range(len(xq))]
    todo = np.arange(len(xq))
    fetch = min(cap, k * min(FIRST_FETCH, table.max_per_video))
    while len(todo) and want > 0:
        D, I = search_masked(table.index, table.vectors, xq[todo], fetch, mask)  # noqa: E741
        short = []
        for i, d, idx in zip(todo, D, I, strict=True):
            out[i] = best_videos(d, idx, table.row, k)
            if len(out[i]) < want:
                short.append(i)
        todo = np.asarray(short, dtype=np.int64)
        if fetch >= cap:
            break
        fetch = min(cap, fetch * 4)
    if len(todo):  # the approximate walk came back short even at the cap: scan the passing segments exactly
        LOG.debug("segment search: %d queries short of %d videos, answered exactly", len(todo), want)
        rows = np.arange(len(table)) if mask is None else np.flatnonzero(mask)
        D, I = exact_search(np.asarray(table.vectors[rows]), xq[todo], cap)  # noqa: E741
        for i, d, idx in zip(todo, D, I, strict=True):
            out[i] = best_videos(d, rows[idx], table.row, k)
    return out


def rank_segments(
    table: SegmentTable, xq: np.ndarray, k: int, video_mask: np.ndarray | None
) -> list[list[tuple[int, float]]]:
    """The top ``k`` passing segments of each query ``xq [nq, D]``: ``(segment, score)`` lists (a video may
    appear several times)."""
    D, I = search_masked(table.index, table.vectors, xq, k, table.mask(video_mask))  # noqa: E741
    return [[(int(j), float(s)) for s, j in zip(d, idx, strict=True) if j >= 0] for d, idx in zip(D, I, strict=True)]
