"""Serving: load a bundle, answer text searches and history-based recommendations; add / remove videos live.

:class:`Recommender` is a thin facade over three parts: the catalog state (:mod:`~multimodal_rec.serving.catalog`:
rows, vectors, the index, tombstones and the lock that guards them), the query encoder
(:mod:`~multimodal_rec.serving.queries`: the model and the popularity-prior column) and the argument checks
(:mod:`~multimodal_rec.serving.validation`). Bundles are read and written by :mod:`multimodal_rec.bundle`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from multimodal_rec.bundle import INDEX_FILE, Bundle, encode_config_of, load_bundle, read_manifest, save_bundle
from multimodal_rec.errors import UserError
from multimodal_rec.model.multimodal import MultimodalModel
from multimodal_rec.serving.catalog import TEXT_COLUMNS, CatalogState, ResolvedHistory, Snapshot
from multimodal_rec.serving.filters import Filters, filter_mask
from multimodal_rec.serving.fusion import Rankers, ranked
from multimodal_rec.serving.lexical import LexicalIndex, text_columns
from multimodal_rec.serving.queries import QueryEncoder, check_min_score, keep_above, noise_score
from multimodal_rec.serving.results import AddResult, Hit
from multimodal_rec.serving.segments import NewRows, bundle_parts, raw_segments, segment_table
from multimodal_rec.serving.synonyms import QueryRewriter
from multimodal_rec.serving.text_backends import KnownTexts, QueryOptions, serve_config
from multimodal_rec.serving.validation import (
    MAX_EXCLUDE,
    MAX_K,
    check_embeddings,
    check_exclude,
    check_history,
    check_k,
    check_query_vectors,
    check_text,
    check_texts,
    id_list,
    new_videos,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from multimodal_rec.config import RunConfig

__all__ = ["MAX_EXCLUDE", "MAX_K", "TEXT_COLUMNS", "AddResult", "Hit", "Recommender", "ResolvedHistory"]
LOG = logging.getLogger(__name__)


def _read_only(part: str, name: str, doc: str) -> property:
    """A read-only attribute of the facade that reads ``self.<part>.<name>`` (the state swaps in new objects)."""
    return property(lambda self: getattr(getattr(self, part), name), doc=doc)


def check_user_tower(cfg: Any) -> None:
    """Refuse to recommend from a zero-shot bundle (``mmrec init --from-pretrained``): its user tower is random."""
    if cfg is not None and cfg.zero_shot:
        raise UserError(
            "this bundle's model is zero-shot (mmrec init --from-pretrained): its user tower is untrained, so it "
            "can search but not recommend; train one with `mmrec train --from-pretrained DIR --config clip`"
        )


class Recommender:
    """A loaded bundle.

    Thread safety: reads (search, recommend, explain) run from many threads at once (the model under a lock, FAISS
    searches in parallel); ``add_videos`` / ``remove_videos`` / ``save`` are serialised and swap their changes in
    under a write lock, so no search ever sees a half-updated catalog or index.
    """

    def __init__(
        self,
        path: Path,
        model: MultimodalModel,
        manifest: dict[str, Any],
        catalog: pd.DataFrame,
        embeddings: np.ndarray,
        index: Any,
        cfg: RunConfig | None = None,
        mapped: bool = False,
        sources: pd.DataFrame | None = None,
        skipped: list[dict[str, str]] | None = None,
        *,
        segments: pd.DataFrame | None = None,
        segment_embeddings: np.ndarray | None = None,
        segment_index: Any = None,
        segment_content: np.ndarray | None = None,
        content: np.ndarray | None = None,
        text: np.ndarray | None = None,
        queries: QueryEncoder | None = None,
    ) -> None:
        """Keyword arguments: the bundle's segments (none: one per video), each video's vector parts, its queries."""
        self.path, self.manifest, self.cfg = path, manifest, cfg
        self._queries = queries or QueryEncoder(model)
        seg = segment_table(catalog, embeddings, segments, segment_embeddings, segment_index, mapped, segment_content)
        parts, prior = {"segments": seg, "content": content, "text": text}, model.cfg.popularity_prior
        self._state = CatalogState(
            catalog, embeddings, index, popularity_prior=prior, sources=sources, skipped=skipped, mapped=mapped, **parts
        )
        self._noise: tuple[int, float | None] | None = None  # (videos served, noise_score), computed on first use
        # BM25, built now, never stored; a bundle made before hybrid search (no "encode") keeps vector as its default
        self._lexical = LexicalIndex(text_columns(manifest, catalog), catalog, hybrid_default="encode" in manifest)
        self._syn = QueryRewriter()  # the synonyms file: off until .synonyms.set(path)

    @classmethod
    def load(
        cls, path: str | Path, device: str = "cpu", verify: bool = True, mmap: bool = True, **opts: Unpack[QueryOptions]
    ) -> Recommender:
        """Load a bundle written by ``mmrec encode`` or :meth:`save`; checksums are verified unless ``verify=False``.
        ``mmap``: index and embeddings memory-mapped (workers share one copy); ``text_backend``: torch (default), onnx
        or onnx-int8 (ONNX Runtime); ``serve``: every query setting (:class:`.text_backends.ServeConfig`)."""
        b = load_bundle(path, device=device, verify=verify, mmap=mmap)
        b.model.cache_text_features = False  # a server sees endless distinct queries: never keep them
        state = (b.catalog, b.embeddings, b.index, b.cfg, mmap, b.sources, b.skipped)
        return cls(b.path, b.model, b.manifest, *state, **_segment_parts(b), queries=_query_encoder(b, opts))

    # --- the served state: a change swaps in new objects (add_videos, remove_videos, save) ----------------------
    model = _read_only("_queries", "model", "The model (with its tokenizer): encodes queries and added videos.")
    prior_coef = _read_only("_queries", "prior_coef", "The learned popularity weight, in cosine units (0.0: no prior).")
    prior_query = _read_only("_queries", "prior_query", "What a user query carries in the index's prior column.")
    catalog = _read_only("_state", "catalog", "Catalog rows: video_id and metadata (removed ones stay until save).")
    embeddings = _read_only("_state", "embeddings", "Video vectors [n, D], row-aligned with catalog.")
    xb = _read_only("_state", "xb", "What the index holds: embeddings plus, with the popularity prior, its column.")
    video_ids = _read_only("_state", "video_ids", "The video id of each row.")
    mapped = _read_only("_state", "mapped", "The index is memory-mapped (read-only): the first change copies it.")
    content = _read_only("_state", "content", "Video-tower vectors [n, D] (None: not in the bundle), for ablations.")
    text = _read_only("_state", "text", "Text-tower vectors of each video's text [n, D] (zeros: none; None: not kept).")

    segments = _read_only("_state", "segment_frame", "video_id, start_s, end_s, row: each video's segments in order.")
    text_columns = _read_only("_lexical", "columns", "The catalog columns lexical search reads (encode.text_columns).")
    synonyms = property(lambda self: self._syn, doc="Query rewrites (serving.synonyms): ``.set(path)``, ``.info``.")
    query_features = _read_only("_queries", "features", "Query texts -> trunk features: stored, cached, batched.")

    index = property(lambda self: self._state.index, lambda self, index: setattr(self._state, "index", index))
    index.__doc__ = "The FAISS index over ``xb`` (row ``i`` is catalog row ``i``)."
    row_of: Mapping[str, int] = _read_only("_state", "row_of", "Live video id -> its row (removed videos are absent).")

    def __len__(self) -> int:
        """Videos served now (added ones included, removed ones not)."""
        return len(self._state)

    # --- queries ----------------------------------------------------------------------------------------------
    def text_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Index-ready query vectors for texts (cosine similarity; no popularity prior)."""
        return self._queries.text_queries(texts, self.xb.shape[1])

    def user_queries(self, histories: Sequence[Sequence[str]], prior: bool = True) -> np.ndarray:
        """Index-ready query vectors for histories of texts, read as given: cosine + the popularity prior."""
        check_user_tower(self.cfg)
        return self._queries.user_queries(histories, self.xb.shape[1], prior)

    encode_queries = _read_only("_queries", "encode_texts", "``encode_queries(texts)``: ``xq [n, D]`` float32.")
    encode_items = _read_only("_queries", "encode_items", "``encode_items(df, enc)``: vectors of videos to add.")
    encode_histories = _read_only(
        "_queries", "encode_histories", "``encode_histories(histories)``: ``xq [n, D]``, attention ``[n, S]``."
    )

    # --- ranking --------------------------------------------------------------------------------------------
    def search_vectors(
        self, xq: np.ndarray, k: int, exclude: Iterable[str] = (), filters: Filters | None = None
    ) -> list[list[Hit]]:
        """Top-``k`` hits for each index-ready query vector (see :meth:`text_queries`), skipping ``exclude`` ids
        (at most ``MAX_EXCLUDE``)."""
        xq = check_query_vectors(xq, self.xb.shape[1])
        return self._state.search(xq, check_k(k), check_exclude(exclude), filters)

    def search(
        self,
        text: str,
        k: int = 10,
        filters: Filters | None = None,
        *,
        min_score: float | None = None,
        mode: str | None = None,
    ) -> list[Hit]:
        """Videos that match a text query, best first, each with its best-matching ``moment``.

        ``filters`` restricts the rows, e.g. ``{"duration_s": (None, 60), "language": "en"}`` (a value, a list of
        values, or a ``(min, max)`` range: :mod:`multimodal_rec.serving.filters`), inside the FAISS search, so ``k``
        hits come back whenever ``k`` videos pass. ``min_score`` drops hits below it (``info()["noise_score"]``: what
        junk queries score). ``mode``: ``"vector"``, ``"lexical"`` or ``"hybrid"`` (None: :attr:`search_mode`)."""
        return self.search_batch([text], k, filters, min_score=min_score, mode=mode)[0]

    def search_batch(
        self,
        texts: Sequence[str],
        k: int = 10,
        filters: Filters | None = None,
        *,
        min_score: float | None = None,
        mode: str | None = None,
    ) -> list[list[Hit]]:
        """:meth:`search` for several queries at once (one model call, one FAISS call); one filter for all."""
        k, min_score = check_k(k), check_min_score(min_score)
        texts = self._syn.texts(check_texts(texts))  # the synonyms file, when one is set
        mode = self._lexical.mode(mode, self.catalog)
        passing = filter_mask(self.catalog, filters)  # a bad filter fails before the model runs
        rank = Rankers(self._state, self._lexical, self.text_queries, texts, filters, passing)
        return ranked(mode, k, min_score, rank.vector, rank.lexical, rank.complete)

    search_mode = property(lambda self: self._lexical.mode(None, self.catalog), doc="hybrid if the catalog has text")

    def search_moments(
        self, text: str, k: int = 10, filters: Filters | None = None, *, min_score: float | None = None
    ) -> list[Hit]:
        """The ``k`` segments that best match a text query, best first (a video once per matching segment; ``moment``:
        the segment's span); ``filters``, ``min_score`` as in :meth:`search`. No segments: as :meth:`search`."""
        text, k, min_score = self._syn.text(check_text(text)), check_k(k), check_min_score(min_score)
        passing = filter_mask(self.catalog, filters)
        return keep_above(self._state.search_moments(self.text_queries([text]), k, filters, passing), min_score)[0]

    def query_info(self, text: str) -> dict[str, Any]:
        """``{"unknown_tokens", "tokens", "in_vocabulary"}``: ``in_vocabulary`` is False when the tokenizer knows
        none of the query's tokens (e.g. only emoji); the text model is English-only, so its hits are noise."""
        return self._queries.query_info(self._syn.text(check_text(text)))

    def recommend(
        self,
        history: Sequence[str],
        k: int = 10,
        exclude: Iterable[str] = (),
        filters: Filters | None = None,
        exclude_seen: bool = True,
        *,
        history_ids: bool = False,
    ) -> list[Hit]:
        """Videos a user will want next, from the texts and video ids they engaged with (oldest first).

        An item that is a served ``video_id`` is read as that video's text (see :meth:`resolve_history`; with
        ``history_ids`` every item is an id and unknown ones are left out). Never returns the ``exclude`` ids (at
        most ``MAX_EXCLUDE`` = 10,000; unknown ids ignored) nor, unless ``exclude_seen=False``, a video the history
        names: exactly (surrounding whitespace aside, case-sensitive) its ``video_id`` or its ``title`` (every video
        with that title). ``k`` hits still come back when enough videos remain; ``filters`` as in :meth:`search`."""
        k, history, exclude = check_k(k), check_history(history), check_exclude(exclude)
        passing = filter_mask(self.catalog, filters)  # a bad filter fails before the model runs
        texts = self._syn.history(self._state.resolve_history(history, history_ids))  # free text rewritten
        seen = history if exclude_seen else ()  # the caller's own items: an id names only its video
        return self._state.search(self.user_queries([texts]), k, exclude, filters, seen, passing)[0]

    def explain(self, history: Sequence[str], *, history_ids: bool = False) -> list[tuple[str, float]]:
        """The attention weight of each history item as the tower read it (an id as its video's text; unknown
        ids left out, see :meth:`resolve_history`): which items drove the recommendation."""
        check_user_tower(self.cfg)
        return self._queries.attention(self._syn.history(self.resolve_history(history, history_ids=history_ids)))

    def resolve_history(self, history: Sequence[str], *, history_ids: bool = False) -> ResolvedHistory:
        """What the user tower reads for ``history``: an item exactly (surrounding spaces aside, case-sensitive) a
        served ``video_id`` becomes that video's text (the first non-blank of ``TEXT_COLUMNS``: title, caption,
        description); other items are free text, or with ``history_ids`` unknown ids, reported and left out (a
        served video without text is always left out). UserError when no item is left."""
        return self._state.resolve_history(check_history(history), history_ids)

    # --- updates --------------------------------------------------------------------------------------------
    def add_videos(
        self,
        catalog: pd.DataFrame | str | Path,
        embeddings: np.ndarray | None = None,
        *,
        batch_size: int = 16,
        workers: int = 0,
        backend: str = "auto",
    ) -> AddResult:
        """Append videos to the served catalog and index, without a rebuild; existing video ids keep their rows.

        ``catalog``: a DataFrame (paths relative to the working directory) or a catalog file (paths relative to
        it) with ``video_id``, ``path`` and any of the bundle's metadata columns. Without ``embeddings`` every clip
        is encoded as ``mmrec encode`` made this bundle (segments, text; unreadable clips skipped and reported); with
        ``embeddings [n, D]`` (row ``i`` for catalog row ``i``, L2-normalised here) nothing is decoded and each video
        is one segment ``[0, duration_s]``. A served id raises UserError (nothing added). New videos have popularity
        count 0; searches see them at once; :meth:`save` persists them."""
        _require_unsharded(self.manifest, "add_videos")
        df = new_videos(catalog, self.catalog, need_paths=embeddings is None)
        self._state.check_new_ids(df["video_id"])
        if embeddings is None:
            df, xb, extra, skipped = _encode_items(self._queries, df, self.manifest, batch_size, workers, backend)
        else:
            xb, skipped, extra = check_embeddings(embeddings, len(df), int(self.embeddings.shape[1])), [], None
        if df.empty:
            first = skipped[0]["reason"] if skipped else "nothing to add"
            raise UserError(f"no video could be added ({len(skipped)} skipped; first: {first})")
        added = self._state.add(df, xb, skipped, files_read=embeddings is None, extra=extra)
        self._lexical.index_for(self.catalog)  # extended now rather than by the next search
        LOG.info("added %d videos (%d skipped): %d served", len(added), len(skipped), len(self))
        return AddResult(added, skipped)

    def remove_videos(self, ids: Iterable[str]) -> int:
        """Stop serving ``ids`` at once (every later search skips them); returns how many were removed.

        An id that is not served raises UserError and nothing is removed. The rows stay in the index as tombstones
        until :meth:`save` compacts them out (HNSW cannot delete; this keeps every index type alike)."""
        n = self._state.remove(list(dict.fromkeys(id_list(ids, "ids to remove"))))
        LOG.info("removed %d videos: %d served", n, len(self))
        return n

    def save(self, path: str | Path) -> Path:
        """Write the served catalog as a complete bundle at ``path``, atomically (``write_bundle``).

        Removed videos are compacted out (the trained index emptied and refilled with the live vectors; HNSW rebuilds
        its graph) and this Recommender switches to that state: a :meth:`load` of ``path`` answers exactly as it."""
        if self.cfg is None:
            raise UserError("this Recommender has no run config to save (load it with Recommender.load)")
        _require_unsharded(self.manifest, "save")
        with self._state.mutation():
            snap = self._state.compacted()
            out = save_bundle(path, _bundle_of(self.model, self.cfg, self.manifest, snap, self.query_features.known))
            self._state.adopt(snap)
            self.path, self.manifest = out, read_manifest(out, verify=False)
            self._lexical.index_for(self.catalog)  # rebuilt over the compacted rows
        LOG.info("saved %d videos to %s", len(snap.catalog), out)
        return out

    def info(self) -> dict[str, Any]:
        """Path, videos served, index type, ``search_mode``, ``text_columns``, ``noise_score``: the 99th percentile of
        the best cosine of junk queries (``queries.NOISE_QUERIES``, vector mode), computed once per catalog size."""
        if self._noise is None or self._noise[0] != len(self):
            self._noise = (len(self), noise_score(partial(self.search_batch, mode="vector")))
        modes = {"search_mode": self.search_mode, "text_columns": list(self.text_columns)}
        return {**_basic_info(self), **modes, "noise_score": self._noise[1], "synonyms": self._syn.info}

    def __repr__(self) -> str:
        return f"Recommender({json.dumps(_basic_info(self))})"


def _basic_info(rec: Recommender) -> dict[str, Any]:
    return {"path": str(rec.path), "videos": len(rec), **{k: rec.manifest[k] for k in ("embed_dim", "index")}}


def _encode_items(
    queries: QueryEncoder, df: pd.DataFrame, manifest: Mapping[str, Any], batch_size: int, workers: int, backend: str
) -> tuple[pd.DataFrame, np.ndarray, NewRows, list[dict[str, str]]]:
    """Encode the videos to add with the bundle's own ``encode`` settings (a bundle from before segments: one
    segment, content only): (the rows that decoded, their item vectors, their segments and vector parts, the
    skipped ones and why)."""
    enc = encode_config_of(dict(manifest))
    vecs, errors = queries.encode_items(df, enc, batch_size, workers, backend)
    rows = zip(df["video_id"], df["path"] if "path" in df else [""] * len(df), errors, strict=True)
    skipped = [{"video_id": v, "path": str(p), "reason": e} for v, p, e in rows if e]
    for s in skipped:
        LOG.warning("not added %s: %s", s["video_id"], s["reason"])
    raw, exact = raw_segments(vecs.seg_vectors, vecs.seg_row, vecs.content, vecs.text, float(enc.text_weight))
    extra = NewRows(vecs.seg_vectors, vecs.seg_row, vecs.spans, vecs.content, vecs.text, raw, exact)
    return df[[not e for e in errors]].reset_index(drop=True), vecs.item, extra, skipped


def _query_encoder(b: Bundle, opts: QueryOptions) -> QueryEncoder:
    """The loaded model behind the text backend ``opts`` ask for, with the bundle's stored item-text features."""
    known = KnownTexts(b.text_features, b.text_feature_keys) if b.text_feature_keys is not None else None
    return QueryEncoder(b.model, serve_config(**opts), b.path, known)


def _segment_parts(b: Bundle) -> dict[str, Any]:
    """The constructor's keyword arguments for a loaded bundle's segments and vector parts."""
    seg = {"segments": b.segments, "segment_embeddings": b.segment_embeddings, "segment_index": b.segment_index}
    return {**seg, "segment_content": b.segment_content, "content": b.content, "text": b.text}


def _bundle_of(
    model: MultimodalModel, cfg: RunConfig, manifest: Mapping[str, Any], snap: Snapshot, known: KnownTexts | None
) -> Bundle:
    """What :meth:`Recommender.save` writes: a compacted snapshot, with the manifest fields it was loaded with, and
    the trunk features of its item texts (the stored ones kept, the others, e.g. of added videos, computed)."""
    parts = bundle_parts(snap.segments, list(snap.catalog["video_id"].astype(str)), snap.content, snap.text)
    index = {INDEX_FILE: snap.index}
    contents = Bundle(model, cfg, snap.catalog, snap.embeddings, snap.sources, snap.skipped, index, **parts)
    contents.fields = {k: v for k, v in manifest.items() if k not in ("format", "files", "segments")}
    contents.text_features, contents.text_feature_keys = _item_features(model, snap.catalog, known)
    if parts["segments"] is not None:
        contents.fields["segments"] = len(parts["segments"])
    return contents


def _item_features(model: MultimodalModel, catalog: pd.DataFrame, known: KnownTexts | None) -> tuple[np.ndarray, list]:
    """Trunk features ``[M, H]`` of the catalog's item texts and the texts: stored ones reused, the rest computed."""
    from multimodal_rec.encoding.known_texts import item_texts, trunk_features_of

    texts = item_texts(catalog)
    rows = [known.row.get(t) for t in texts] if known is not None else [None] * len(texts)
    missing = [t for t, r in zip(texts, rows, strict=True) if r is None]
    new = dict(zip(missing, trunk_features_of(model, missing), strict=True))
    feats = (
        np.stack([new[t] if r is None else known.features[r] for t, r in zip(texts, rows, strict=True)])
        if texts
        else np.zeros((0, model.text.feat_dim), np.float32)
    )
    return feats.astype(np.float32), texts


def _require_unsharded(manifest: Mapping[str, Any], what: str) -> None:
    """Adding to or compacting a sharded index is not supported yet: say how to get there instead."""
    n = len(manifest.get("index_files") or [])
    if n:
        raise UserError(
            f"{what} is not supported on a sharded bundle ({n} index shards) yet: update the catalog and rerun "
            f"mmrec encode --index-shards {n} (incremental: unchanged videos are not re-encoded)"
        )
