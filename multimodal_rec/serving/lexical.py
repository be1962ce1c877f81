"""Lexical search: BM25 over the catalog's own text, the half of hybrid search that matches words exactly.

A query that names a video ("zorblat quenix") cannot be answered by a text tower that never saw the name; a word
index over the catalog's text columns can. BM25 comes from ``bm25s`` (a sparse-matrix scorer, numpy + scipy only),
over the configured text columns (the bundle manifest's ``encode.text_columns``, else :data:`DEFAULT_TEXT_COLUMNS`;
only those the catalog has), a row's columns read as one document.

Tokens: the text lowercased, split on anything that is not a letter or a digit, English stop words (Lucene's 33,
``bm25s.stopwords.STOPWORDS_EN``: "the", "a", "of"... but not "up" or "left", which name motions here) removed.

The index is built from the served catalog, never stored (so never stale): when the Recommender loads, and again
whenever the catalog changes (videos added: the token lists of the rows already there are reused, only the new rows
are tokenized; a compaction by ``save``: rebuilt). Removed videos are masked out of every answer at once, but like
Lucene's deleted documents they still count in the corpus statistics (document frequencies, mean length) until the
compaction: a removal never rebuilds the index.

Cost: building is O(tokens in the catalog) (100k documents of 20 tokens: 2.4 s to tokenize, 4.6 s to index on this
machine's shared CPU; linear, so ~1 min at 1M). A query scores every document (``get_scores``: O(postings of its
terms) + O(n)), is masked by the same row mask as the vector side (filters, tombstones) and its top k taken by
``argpartition`` (O(n)): exact, 2 ms per query at 100k documents (~20 ms at 1M).
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from multimodal_rec.errors import UserError

LOG = logging.getLogger(__name__)
MODES = ("vector", "lexical", "hybrid")
DEFAULT_TEXT_COLUMNS = ("title", "description", "tags")
_WORD = re.compile(r"[^\W_]+")  # runs of letters and digits (any script)


def _stop_words() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    # bm25s sets its own logger to DEBUG on import, so "Building index from tokens" would reach our handlers even
    # under `mmrec --quiet`: keep it to warnings like every other library
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return frozenset(STOPWORDS_EN)


STOP_WORDS = _stop_words()


def tokenize(text: str) -> list[str]:
    """Lowercased runs of letters and digits, English stop words removed: ``"The Zorblat-Quenix!"`` ->
    ``["zorblat", "quenix"]``."""
    return [w for w in _WORD.findall(text.lower()) if w not in STOP_WORDS]


def text_columns(manifest: Mapping[str, Any], catalog: pd.DataFrame) -> list[str]:
    """The text columns lexical search reads: the manifest's ``encode.text_columns`` (the ones the encoder read
    into the item vectors) when it has them, else :data:`DEFAULT_TEXT_COLUMNS`; only those the catalog has."""
    encode = manifest.get("encode")
    wanted = encode.get("text_columns") if isinstance(encode, Mapping) else None
    if not isinstance(wanted, list | tuple):
        wanted = DEFAULT_TEXT_COLUMNS
    return [c for c in wanted if isinstance(c, str) and c in catalog.columns]


def _value_text(v: Any) -> str:
    """A catalog cell as text: strings as they are, lists (e.g. tags) joined, missing values empty."""
    if isinstance(v, str):
        return v
    if isinstance(v, list | tuple | np.ndarray):
        return " ".join(_value_text(x) for x in v)
    if v is None or (pd.api.types.is_scalar(v) and pd.isna(v)):
        return ""
    return str(v)


def row_tokens(catalog: pd.DataFrame, columns: Sequence[str]) -> list[list[str]]:
    """One token list per catalog row: the row's ``columns`` read as one document."""
    if not columns:
        return [[] for _ in range(len(catalog))]
    cells = catalog[list(columns)].to_numpy(dtype=object)
    # kept for the life of the index (appends reuse them): each word stored once, not once per row it is in
    # (at 1M short titles, ~100 MB instead of ~480 MB per serving process)
    return [[sys.intern(w) for w in tokenize(" ".join(_value_text(v) for v in row))] for row in cells]


class BM25Index:
    """A BM25 index over the token lists of one catalog's rows (row ``i`` = document ``i``); immutable."""

    def __init__(self, tokens: list[list[str]]) -> None:
        import bm25s

        self.tokens = tokens
        self.n = len(tokens)
        self.has_text = any(tokens)  # bm25s cannot index a corpus without a single token
        self._bm25 = bm25s.BM25()
        if self.has_text:
            self._bm25.index(tokens, show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for ``query`` (``[n]`` float32; 0 where no query word occurs)."""
        if not self.has_text:
            return np.zeros(self.n, dtype=np.float32)
        ids = self._bm25.get_tokens_ids(tokenize(query))  # words the catalog never uses are dropped
        if not ids:
            return np.zeros(self.n, dtype=np.float32)
        return np.asarray(self._bm25.get_scores_from_ids(ids), dtype=np.float32)

    def top(self, query: str, k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` documents with a positive score among ``mask`` (all when None): ``(D [k], I [k])``,
        best first, equal scores by row; padded with ``0.0`` / ``-1`` like a FAISS result when fewer match."""
        s = self.scores(query)
        ok = s > 0
        if mask is not None:
            ok &= mask
        rows = np.flatnonzero(ok)
        if len(rows) > k:
            cut = s[rows[np.argpartition(-s[rows], k - 1)[k - 1]]]  # the k-th best score, O(n)
            above = np.flatnonzero(ok & (s > cut))
            tied = np.flatnonzero(ok & (s == cut))[: k - len(above)]  # ties at the cut: the lowest rows
            rows = np.concatenate([above, tied])
        rows = rows[np.lexsort((rows, -s[rows]))][:k]
        D = np.zeros(k, dtype=np.float32)
        I = np.full(k, -1, dtype=np.int64)  # noqa: E741
        D[: len(rows)], I[: len(rows)] = s[rows], rows
        return D, I


class LexicalIndex:
    """The BM25 index of the served catalog: rebuilt when the catalog object changes (a change swaps in a new
    one), reusing the token lists of rows that were already there when videos were appended. Thread-safe."""

    def __init__(
        self, columns: Sequence[str], catalog: pd.DataFrame | None = None, *, hybrid_default: bool = True
    ) -> None:
        self.columns = tuple(columns)
        self.hybrid_default = hybrid_default  # False: a bundle made before hybrid search keeps vector as its default
        self._lock = threading.Lock()
        self._catalog: pd.DataFrame | None = None
        self._index: BM25Index | None = None
        if catalog is not None:
            self.index_for(catalog)  # built now (when the Recommender loads) rather than by the first search

    def index_for(self, catalog: pd.DataFrame) -> BM25Index:
        """The index over ``catalog``'s rows, built now if the last one was built over another catalog."""
        with self._lock:
            if self._index is None or self._catalog is not catalog:
                self._index = BM25Index(self._tokens(catalog))
                self._catalog = catalog
                LOG.info("lexical index over %s: %d documents", ", ".join(self.columns) or "no text", len(catalog))
            return self._index

    def _tokens(self, catalog: pd.DataFrame) -> list[list[str]]:
        """Token lists for ``catalog``: those of the last catalog reused when ``catalog`` only appends rows to it."""
        old, index = self._catalog, self._index
        if old is not None and index is not None and 0 < len(old) <= len(catalog):
            cols = ["video_id", *self.columns]
            if catalog[cols].iloc[: len(old)].reset_index(drop=True).equals(old[cols].reset_index(drop=True)):
                return index.tokens + row_tokens(catalog.iloc[len(old) :], self.columns)
        return row_tokens(catalog, self.columns)

    def has_text(self, catalog: pd.DataFrame) -> bool:
        """Some row of ``catalog`` has a word in the text columns (lexical search can match something)."""
        return self.index_for(catalog).has_text

    def mode(self, mode: Any, catalog: pd.DataFrame) -> str:
        """:func:`resolve_mode` for ``catalog``: the default when ``mode`` is None, else ``mode`` checked."""
        return resolve_mode(mode, self.has_text(catalog), self.columns, self.hybrid_default)

    def search(
        self, texts: Sequence[str], k: int, catalog: pd.DataFrame, mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows of ``catalog`` by BM25 for each query, among ``mask``: ``D, I`` ``[nq, k]`` (FAISS style,
        ``-1`` rows where fewer documents match)."""
        index = self.index_for(catalog)
        out = [index.top(t, k, mask) for t in texts]
        return np.stack([d for d, _ in out]), np.stack([i for _, i in out])


def resolve_mode(mode: Any, has_text: bool, columns: Sequence[str], hybrid_default: bool = True) -> str:
    """The search mode to run: ``mode`` checked (one of :data:`MODES`), or for None the default, ``"hybrid"`` when
    the catalog has text (and ``hybrid_default``) and ``"vector"`` otherwise. UserError for an unknown mode, or a
    word-based one on a catalog without text."""
    if mode is None:
        return "hybrid" if has_text and hybrid_default else "vector"
    if not isinstance(mode, str) or mode not in MODES:
        raise UserError(f"unknown search mode {str(mode)[:40]!r}: use one of {', '.join(MODES)}")
    if mode != "vector" and not has_text:
        where = ", ".join(columns) if columns else f"none of {', '.join(DEFAULT_TEXT_COLUMNS)} in the catalog"
        raise UserError(f"search mode {mode!r} needs catalog text, and this catalog has none (text columns: {where})")
    return mode
