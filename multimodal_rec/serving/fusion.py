"""Hybrid search: reciprocal rank fusion (RRF) of the vector ranking and the lexical (BM25) ranking.

Why RRF (Cormack et al., SIGIR 2009): it reads only ranks, so the two scores never have to be put on one scale. A
cosine lives in [-1, 1] and bunches near its catalog's typical value; a BM25 score is unbounded and depends on the
query's length and its words' rarity. A weighted sum of the two would need a calibration per catalog and per query
length; RRF needs none, and one constant, ``k = 60``, the value of the paper, damps the weight of the very first
ranks so that a video both lists rank well beats one that only one list ranks first.

Each list contributes its top ``max(4 k, 50)`` (:func:`candidates`), after filters and tombstones (both sides are
masked alike). A video only one list holds gets only that list's part.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from multimodal_rec.serving.filters import Filters
from multimodal_rec.serving.queries import keep_above
from multimodal_rec.serving.results import Hit

if TYPE_CHECKING:
    from multimodal_rec.serving.catalog import CatalogState
    from multimodal_rec.serving.lexical import LexicalIndex

LOG = logging.getLogger(__name__)
RRF_K = 60  # the constant of Cormack et al.: score = sum over lists of 1 / (RRF_K + rank)
T = TypeVar("T", bound=Hashable)


def candidates(k: int) -> int:
    """How many hits each list contributes to the fusion for ``k`` fused hits: ``max(4 k, 50)``."""
    return max(4 * k, 50)


def reciprocal_rank_fusion(rankings: Sequence[Sequence[T]], rrf_k: int = RRF_K) -> list[tuple[T, float]]:
    """Fuse rankings (each a sequence of distinct ids, best first) into one: ``[(id, score)]``, best first, with
    ``score = sum over the lists holding id of 1 / (rrf_k + rank)`` (rank 1-based).

    Equal scores are ordered by the id's best rank in any list, then by the list that gave it (earlier lists
    first), so the order is total and deterministic: pass the list to trust more on a tie first.
    """
    score: dict[T, float] = {}
    best: dict[T, tuple[int, int]] = {}  # id -> (best rank, index of the list that gave it)
    for li, ranking in enumerate(rankings):
        for rank, item in enumerate(ranking, start=1):
            score[item] = score.get(item, 0.0) + 1.0 / (rrf_k + rank)
            if item not in best or (rank, li) < best[item]:
                best[item] = (rank, li)
    order = sorted(score, key=lambda item: (-score[item], best[item]))
    return [(item, score[item]) for item in order]


def fuse_hits(vector: Sequence[Hit], lexical: Sequence[Hit], k: int, rrf_k: int = RRF_K) -> list[Hit]:
    """The top ``k`` of the RRF fusion of a vector and a lexical hit list (both already filtered).

    Each fused hit is the vector hit (or, when only the lexical list has it, the lexical one) with ``score`` the
    fused score, ``rank`` its new rank and ``scores = {"vector": cosine or None, "lexical": BM25 or None}``. On a
    tie the lexical list goes first: a tie pits a video only one list holds against one only the other holds at the
    same rank, and a word match (a title, a name) is the more specific evidence.
    """
    by_vector = {h.video_id: h for h in vector}
    by_lexical = {h.video_id: h for h in lexical}
    fused = reciprocal_rank_fusion([[h.video_id for h in lexical], [h.video_id for h in vector]], rrf_k)
    hits: list[Hit] = []
    for rank, (vid, score) in enumerate(fused[:k], start=1):
        v, w = by_vector.get(vid), by_lexical.get(vid)
        parts = {"vector": None if v is None else v.score, "lexical": None if w is None else w.score}
        base = v if v is not None else by_lexical[vid]  # every fused id came from one of the lists
        hits.append(dataclasses.replace(base, score=score, rank=rank, scores=parts))
    return hits


def ranked(
    mode: str,
    k: int,
    min_score: float | None,
    vector: Callable[..., list[list[Hit]]],
    lexical: Callable[..., list[list[Hit]]],
    complete: Callable[[list[list[Hit]]], list[list[Hit]]] | None = None,
) -> list[list[Hit]]:
    """The top ``k`` hits of each query in a search ``mode``, from the two masked rankers (``n`` -> each query's
    top-``n`` hits, filters and tombstones applied):

    - ``"vector"``: the vector hits; ``score`` is the cosine, ``min_score`` drops hits below it.
    - ``"lexical"``: the lexical hits (only videos sharing a word with the query); ``score`` is BM25, and so is
      the unit of ``min_score``.
    - ``"hybrid"``: the RRF fusion (:func:`fuse_hits`) of both top-:func:`candidates` lists; ``score`` is the fused
      score, ``scores`` the parts; ``min_score`` (a cosine) trims the vector list before the fusion, the lexical
      candidates are those with a positive BM25. With ``complete``, the rankers are called with ``bare=True``
      (candidates without metadata or moments) and only the fused top ``k`` are completed: building the 2 x
      :func:`candidates` hits the fusion discards took most of a hybrid search's time outside the text model.
    """
    if mode == "vector":
        return keep_above(vector(k), min_score)
    if mode == "lexical":
        return keep_above(lexical(k), min_score)
    n, bare = candidates(k), {"bare": True} if complete else {}
    fused = [
        fuse_hits(v, w, k) for v, w in zip(keep_above(vector(n, **bare), min_score), lexical(n, **bare), strict=True)
    ]
    return complete(fused) if complete else fused


@dataclass
class Rankers:
    """The two rankings of one batch of queries over the served catalog, each ``n`` -> the top-``n`` hits of every
    query with the filters and tombstones applied (the same row mask on both sides); ``bare``: candidates only
    (:meth:`complete` finishes those that make the cut)."""

    state: CatalogState
    words: LexicalIndex
    encode: Callable[[Sequence[str]], np.ndarray]  # texts -> index-ready query vectors
    texts: Sequence[str]
    filters: Filters | None
    passing: np.ndarray | None  # filter_mask(catalog, filters), computed once by the caller
    xq: np.ndarray | None = None  # the query vectors, once vector() has encoded them

    def vector(self, n: int, bare: bool = False) -> list[list[Hit]]:
        """The text tower's ranking (the model runs only here: lexical mode never calls it)."""
        self.xq = self.encode(self.texts)
        return self.state.search_text(self.xq, n, self.filters, self.passing, bare)

    def lexical(self, n: int, bare: bool = False) -> list[list[Hit]]:
        """The BM25 ranking (videos sharing no word with a query are not in its list)."""
        hits = self.state.rank_rows(partial(self.words.search, self.texts, n), self.filters, self.passing, bare)
        return hits if bare else self.state.with_moments(hits)  # no query vector: the whole video

    def complete(self, hits: list[list[Hit]]) -> list[list[Hit]]:
        """Fused bare hits with their metadata and moments (the vector's for hits it scored)."""
        return self.state.completed(hits, self.xq)
