"""Serving: load a bundle, answer text searches and history-based recommendations; add / remove videos live.

Row ``i`` of the catalog, of the embeddings and of the FAISS index is the same video. Removed videos stay in the
index as tombstones (every search skips them through the same ID selector as metadata filters) until
:meth:`Recommender.save` compacts them out; added videos are appended to the index without a rebuild.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from multimodal_rec.bundle import INDEX_FILE, Bundle, load_bundle, read_manifest, save_bundle
from multimodal_rec.errors import UserError
from multimodal_rec.index.search import search_masked
from multimodal_rec.model.multimodal import MultimodalModel, to_numpy
from multimodal_rec.model.prior import PRIOR_COLUMN, index_vectors, query_prior, with_prior_column
from multimodal_rec.serving.filters import Filters, filter_mask

if TYPE_CHECKING:
    from multimodal_rec.config import RunConfig

LOG = logging.getLogger(__name__)
MAX_K = 1000
SOURCE_COLUMNS = ("abs_path", "size", "mtime_ns")  # sources.parquet beside video_id (incremental `mmrec encode`)


@dataclass
class Hit:
    """One ranked video: id, score (cosine; plus the popularity prior for recommend), 1-based rank, metadata."""

    video_id: str
    score: float
    rank: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready dict: video_id, score, rank and the metadata columns."""
        return {"video_id": self.video_id, "score": round(self.score, 6), "rank": self.rank, **self.metadata}


@dataclass
class AddResult:
    """What :meth:`Recommender.add_videos` did: ids added, and videos skipped (``video_id``, ``path``, ``reason``)."""

    added: list[str]
    skipped: list[dict[str, str]]


def _check_k(k: int) -> int:
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1:
        raise UserError(f"k must be a positive integer, got {k!r}")
    if k > MAX_K:
        raise UserError(f"k must be at most {MAX_K}, got {k}")
    return int(k)


def _check_text(text: str, what: str = "query") -> str:
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{what} must be a non-empty string")
    return text


def _check_history(history: Sequence[str]) -> list[str]:
    if isinstance(history, str) or not isinstance(history, Sequence) or not history:
        raise UserError("history must be a non-empty list of texts (oldest first)")
    for t in history:
        _check_text(t, "each history item")
    return list(history)


def _id_list(ids: Iterable[str], what: str) -> list[str]:
    if isinstance(ids, str) or not isinstance(ids, Iterable):
        raise UserError(f"{what} must be a list of video ids, got {type(ids).__name__}")
    out = list(ids)
    bad = next((v for v in out if not isinstance(v, str)), None)
    if bad is not None:
        raise UserError(f"{what}: video ids are strings, got {type(bad).__name__} {bad!r}")
    return out


class _RWLock:
    """Many readers or one writer; a waiting writer holds back new readers (writers never starve). Not reentrant."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = self._waiting = 0
        self._writer = False

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


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
    ) -> None:
        self.path, self.model, self.manifest, self.cfg = path, model, manifest, cfg
        self._lock = threading.Lock()  # the model (torch modules are not safe to call from several threads)
        self._rw = _RWLock()  # the catalog / index state: searches read, add / remove / save write
        self._mutating = threading.Lock()  # one mutation at a time (it may encode or write files for a while)
        self._mapped = mapped  # the index is memory-mapped (read-only): mutations copy it into memory first
        self._skipped = list(skipped or [])
        self.prior_coef = model.rec_prior_coef()
        self.prior_query = query_prior(self.prior_coef)  # what a user query carries in the index's prior column
        self._set_state(catalog, embeddings, index, sources)

    def _set_state(
        self, catalog: pd.DataFrame, embeddings: np.ndarray, index: Any, sources: pd.DataFrame | None
    ) -> None:
        """Every row-aligned structure, rebuilt from the catalog (all rows live)."""
        self.catalog, self.embeddings, self.index = catalog, embeddings, index
        self.xb = index_vectors(embeddings, catalog, self.model.cfg.popularity_prior)  # what the index holds
        self.video_ids: list[str] = list(catalog["video_id"].astype(str))
        self._row = {v: i for i, v in enumerate(self.video_ids)}  # live ids only
        self._meta_cols = [c for c in catalog.columns if c != "video_id"]
        self._records = catalog[self._meta_cols].to_dict("records")
        self._alive = np.ones(len(catalog), dtype=bool)
        self._by_title: dict[str, list[int]] = {}
        if "title" in catalog.columns:
            for i, t in enumerate(catalog["title"]):
                if isinstance(t, str):
                    self._by_title.setdefault(t.strip(), []).append(i)
        if sources is None:
            sources = pd.DataFrame({"video_id": self.video_ids})
        src = sources.drop_duplicates("video_id").set_index("video_id").reindex(self.video_ids)
        self._sources = pd.DataFrame(
            {
                "video_id": self.video_ids,
                "abs_path": src["abs_path"].fillna("").astype(str).to_numpy() if "abs_path" in src else "",
                "size": src["size"].fillna(-1).astype(np.int64).to_numpy() if "size" in src else -1,
                "mtime_ns": src["mtime_ns"].fillna(-1).astype(np.int64).to_numpy() if "mtime_ns" in src else -1,
            }
        )

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", verify: bool = True, mmap: bool = True) -> Recommender:
        """Load a bundle written by ``mmrec encode`` or :meth:`save`; checksums are verified unless ``verify=False``.

        With ``mmap`` (the default) the index and embeddings are memory-mapped, so several worker processes
        serving one bundle share a single copy in the page cache.
        """
        b = load_bundle(path, device=device, verify=verify, mmap=mmap)
        b.model.cache_text_features = False  # a server sees endless distinct queries: never keep them
        return cls(b.path, b.model, b.manifest, b.catalog, b.embeddings, b.index, b.cfg, mmap, b.sources, b.skipped)

    def __len__(self) -> int:
        """Videos served now (added ones included, removed ones not)."""
        return len(self._row)

    @property
    def row_of(self) -> Mapping[str, int]:
        """Live video id -> its row in ``catalog``, ``embeddings`` and the index (removed videos are absent)."""
        return MappingProxyType(self._row)

    def text_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Index-ready query vectors for texts (cosine similarity; no popularity prior)."""
        return with_prior_column(self.encode_queries(texts), self.xb.shape[1], 0.0)

    def user_queries(self, histories: Sequence[Sequence[str]], prior: bool = True) -> np.ndarray:
        """Index-ready query vectors for histories: cosine + the learned popularity prior (unless ``prior=False``)."""
        u, _ = self.encode_histories(histories)
        return with_prior_column(u, self.xb.shape[1], self.prior_query if prior else 0.0)

    # --- encoding -------------------------------------------------------------------------------------------
    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> ``xq [n, D]`` float32."""
        with self._lock, torch.inference_mode():
            return to_numpy(self.model.encode_text(list(texts)))

    def encode_histories(self, histories: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Histories (oldest first) -> ``xq [n, D]`` and attention weights ``[n, S]``."""
        with self._lock, torch.inference_mode():
            u, w = self.model.encode_user([list(h) for h in histories])
            return to_numpy(u), to_numpy(w)

    # --- ranking --------------------------------------------------------------------------------------------
    def _mask(
        self, filters: Filters | None, excluded: Iterable[int], passing: np.ndarray | None = None
    ) -> np.ndarray | None:
        """Rows a search may return (live, passing ``filters``, not ``excluded``); None when every row may.

        ``passing`` is ``filter_mask(catalog, filters)`` already computed by the caller; it is recomputed only
        when the catalog grew in between (an ``add_videos`` from another thread).
        """
        if passing is None or len(passing) != len(self.catalog):
            passing = filter_mask(self.catalog, filters)
        mask = None if passing is None else passing.copy()
        if len(self._row) < len(self._alive):  # tombstones
            mask = self._alive.copy() if mask is None else mask & self._alive
        rows = list(excluded)
        if rows:
            mask = self._alive.copy() if mask is None else mask
            mask[rows] = False
        return mask

    def _seen_rows(self, history: Sequence[str]) -> list[int]:
        rows: list[int] = []
        for item in history:
            key = item.strip()
            row = self._row.get(key)
            if row is not None:
                rows.append(row)
            rows.extend(self._by_title.get(key, ()))
        return rows

    def _hits(self, D: np.ndarray, I: np.ndarray) -> list[Hit]:  # noqa: E741
        hits: list[Hit] = []
        for score, row in zip(D, I, strict=True):
            if row >= 0:
                hits.append(Hit(self.video_ids[row], float(score), len(hits) + 1, dict(self._records[row])))
        return hits

    def _search(
        self,
        xq: np.ndarray,
        k: int,
        exclude: Iterable[str],
        filters: Filters | None,
        seen: Sequence[str] = (),
        passing: np.ndarray | None = None,
    ) -> list[list[Hit]]:
        with self._rw.read():
            excluded = [self._row[v] for v in exclude if v in self._row] + self._seen_rows(seen)
            mask = self._mask(filters, excluded, passing)
            D, I = search_masked(self.index, self.xb, xq, k, mask)  # noqa: E741
            return [self._hits(d, i) for d, i in zip(D, I, strict=True)]

    def search_vectors(
        self, xq: np.ndarray, k: int, exclude: Iterable[str] = (), filters: Filters | None = None
    ) -> list[list[Hit]]:
        """Top-``k`` hits for each index-ready query vector (see :meth:`text_queries`), skipping ``exclude`` ids."""
        xq = np.asarray(xq, dtype=np.float32)
        d = self.xb.shape[1]
        if xq.ndim != 2 or xq.shape[1] != d or not len(xq) or not np.isfinite(xq).all():
            raise UserError(f"query vectors must be a finite [n, {d}] array, got shape {xq.shape}")
        return self._search(xq, _check_k(k), _id_list(exclude, "exclude"), filters)

    def search(self, text: str, k: int = 10, filters: Filters | None = None) -> list[Hit]:
        """Videos that match a text query, best first.

        ``filters`` restricts the catalog rows, e.g. ``{"duration_s": (None, 60), "language": "en"}``: per column a
        value (equality), a list of values (any of them), or a ``(min, max)`` range with None for an open end (see
        :mod:`multimodal_rec.serving.filters`). The filter runs inside the FAISS search, so ``k`` hits come back
        whenever at least ``k`` videos pass it.
        """
        return self.search_batch([text], k, filters)[0]

    def search_batch(self, texts: Sequence[str], k: int = 10, filters: Filters | None = None) -> list[list[Hit]]:
        """:meth:`search` for several queries at once (one model call, one FAISS call); one filter for all."""
        k = _check_k(k)
        if isinstance(texts, str) or not texts:
            raise UserError("no queries given")
        for t in texts:
            _check_text(t)
        passing = filter_mask(self.catalog, filters)  # a bad filter fails before the model runs
        return self._search(self.text_queries(texts), k, (), filters, passing=passing)

    def recommend(
        self,
        history: Sequence[str],
        k: int = 10,
        exclude: Iterable[str] = (),
        filters: Filters | None = None,
        exclude_seen: bool = True,
    ) -> list[Hit]:
        """Videos a user will want next, from the texts they engaged with (oldest first).

        Never returns the ``exclude`` ids (unknown ids are ignored) nor, unless ``exclude_seen=False``, a video
        the history already names: a history item names a video when it is exactly (surrounding whitespace
        aside, case-sensitive) the video's ``video_id`` or its ``title`` (every video with that title). ``k`` hits
        still come back when enough videos remain. ``filters`` as in :meth:`search`.
        """
        k = _check_k(k)
        history = _check_history(history)
        exclude = _id_list(exclude, "exclude")
        passing = filter_mask(self.catalog, filters)  # a bad filter fails before the model runs
        seen = history if exclude_seen else ()
        return self._search(self.user_queries([history]), k, exclude, filters, seen, passing)[0]

    def explain(self, history: Sequence[str]) -> list[tuple[str, float]]:
        """The attention weight of each history item: which items drove the recommendation."""
        history = _check_history(history)
        kept = history[-self.model.cfg.user.max_history :]
        _, w = self.encode_histories([kept])
        return [(t, float(x)) for t, x in zip(kept, w[0][: len(kept)], strict=True)]

    # --- updates --------------------------------------------------------------------------------------------
    def _new_rows(self, catalog: pd.DataFrame | str | Path, need_paths: bool) -> pd.DataFrame:
        """The videos to add, checked against the bundle's catalog (one-line UserErrors)."""
        from multimodal_rec.data.tables import read_catalog

        if isinstance(catalog, str | Path):
            df = read_catalog(catalog)  # paths relative to the catalog file
        elif isinstance(catalog, pd.DataFrame):
            df = catalog.copy().reset_index(drop=True)
            if "video_id" not in df.columns or (need_paths and "path" not in df.columns):
                need = "video_id and path columns" if need_paths else "a video_id column"
                raise UserError(f"videos to add need {need} (got: {', '.join(map(str, df.columns))})")
            if "path" in df.columns:
                df["abs_path"] = [str(Path(p).resolve()) if isinstance(p, str) and p else "" for p in df["path"]]
        else:
            raise UserError(f"videos to add: expected a DataFrame or a catalog file, got {type(catalog).__name__}")
        if df.empty:
            raise UserError("no videos to add")
        if df["video_id"].isna().any():
            raise UserError("videos to add: video_id must not be empty")
        df["video_id"] = df["video_id"].astype(str)
        dup = df["video_id"][df["video_id"].duplicated()]
        if len(dup):
            raise UserError(f"videos to add repeat video_id {dup.iloc[0]!r}")
        known = set(self.catalog.columns) | {"abs_path"}
        extra = [c for c in df.columns if c not in known]
        if extra:
            raise UserError(f"videos to add have column(s) {', '.join(map(str, extra))} the bundle's catalog lacks")
        for c in df.columns.drop("abs_path", errors="ignore"):
            old, new = self.catalog[c], df[c]
            if pd.api.types.is_numeric_dtype(old) and not new.isna().all() and not pd.api.types.is_numeric_dtype(new):
                raise UserError(f"videos to add: column {c!r} must be numeric like the bundle's catalog")
        return df

    def _check_new_ids(self, ids: Sequence[str]) -> None:
        taken = next((v for v in ids if v in self._row), None)
        if taken is not None:
            raise UserError(f"video id {taken!r} is already in the catalog (remove it first to replace it)")

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
        is decoded and encoded with the bundle's own video tower (unreadable clips are skipped and reported);
        with ``embeddings [n, D]`` (row ``i`` for catalog row ``i``, L2-normalised here) nothing is decoded and
        ``path`` is optional. A video id already served raises UserError and nothing is added. New videos have
        popularity count 0. Searches see the new videos as soon as this returns; :meth:`save` persists them.
        """
        from multimodal_rec.encoding.job import encode_videos

        self._require_unsharded("add_videos")
        df = self._new_rows(catalog, need_paths=embeddings is None)
        self._check_new_ids(list(df["video_id"]))
        D = int(self.embeddings.shape[1])
        skipped: list[dict[str, str]] = []
        if embeddings is None:
            xb, errors = encode_videos(self.model, list(df["abs_path"]), batch_size, workers, backend, self._lock)
            ok = np.array([not e for e in errors])
            skipped = [
                {"video_id": v, "path": str(p), "reason": e}
                for v, p, e in zip(df["video_id"], df["path"], errors, strict=True)
                if e
            ]
            for s in skipped:
                LOG.warning("not added %s: %s", s["video_id"], s["reason"])
            df = df[ok].reset_index(drop=True)
            sizes_known = True
        else:
            xb = np.asarray(embeddings, dtype=np.float32)
            if xb.ndim != 2 or xb.shape != (len(df), D):
                raise UserError(f"embeddings must have shape ({len(df)}, {D}) (one row per video), got {xb.shape}")
            norms = np.linalg.norm(xb, axis=1, keepdims=True)
            if not np.isfinite(xb).all() or (norms < 1e-12).any():
                raise UserError("embeddings must be finite and non-zero")
            xb = xb / norms
            sizes_known = False  # the files were not read: a later `mmrec encode` must not reuse these vectors
        if df.empty:
            first = skipped[0]["reason"] if skipped else "nothing to add"
            raise UserError(f"no video could be added ({len(skipped)} skipped; first: {first})")
        df[PRIOR_COLUMN] = 0
        if "abs_path" not in df.columns:
            df["abs_path"] = ""
        if sizes_known:
            from multimodal_rec.encoding.job import file_stats as _file_stats

            sizes, mtimes = _file_stats(list(df["abs_path"]))
        else:
            sizes = mtimes = [-1] * len(df)
        src = pd.DataFrame({"video_id": df["video_id"], "abs_path": df["abs_path"], "size": sizes, "mtime_ns": mtimes})
        rows = df.drop(columns=["abs_path"]).reindex(columns=self.catalog.columns)
        vectors = index_vectors(xb, rows, self.model.cfg.popularity_prior)

        with self._mutating:  # the state only changes under this lock: build the new arrays, then swap them in
            self._check_new_ids(list(rows["video_id"]))  # again: another thread may have added them meanwhile
            index = self._writable_index()
            private = index is not self.index  # a fresh copy: filled before searches have to wait
            if private:
                index.add(np.ascontiguousarray(vectors))
            catalog = pd.concat([self.catalog, rows], ignore_index=True)
            embeddings = np.vstack([self.embeddings, xb]).astype(np.float32, copy=False)  # O(n): add in batches
            xb_all = np.vstack([self.xb, vectors]).astype(np.float32, copy=False)
            sources = pd.concat([self._sources, src], ignore_index=True)
            alive = np.concatenate([self._alive, np.ones(len(rows), dtype=bool)])
            records = rows[self._meta_cols].to_dict("records")
            with self._rw.write():
                if not private:
                    index.add(np.ascontiguousarray(vectors))
                n0 = len(self.video_ids)
                self.index, self._mapped = index, False
                self.catalog, self.embeddings, self.xb = catalog, embeddings, xb_all
                self._sources, self._alive = sources, alive
                self._skipped.extend(skipped)
                for i, (vid, rec) in enumerate(zip(rows["video_id"], records, strict=True)):
                    self.video_ids.append(vid)
                    self._row[vid] = n0 + i
                    self._records.append(rec)
                    title = rec.get("title")
                    if isinstance(title, str):
                        self._by_title.setdefault(title.strip(), []).append(n0 + i)
        LOG.info("added %d videos (%d skipped): %d served", len(rows), len(skipped), len(self))
        return AddResult(list(rows["video_id"]), skipped)

    def _require_unsharded(self, what: str) -> None:
        n = len(self.manifest.get("index_files") or [])
        if n:
            raise UserError(
                f"{what} is not supported on a sharded bundle ({n} index shards) yet: update the catalog and rerun "
                f"mmrec encode --index-shards {n} (incremental: unchanged videos are not re-encoded)"
            )

    def _writable_index(self) -> Any:
        """The index itself, or an in-memory copy of a memory-mapped one (``add`` on a mapped index aborts)."""
        if not self._mapped:
            return self.index
        import faiss

        LOG.info("copying the memory-mapped index into memory before changing it")
        return faiss.deserialize_index(faiss.serialize_index(self.index))

    def remove_videos(self, ids: Iterable[str]) -> int:
        """Stop serving ``ids`` at once (every later search skips them); returns how many were removed.

        An id that is not served raises UserError and nothing is removed. The rows stay in the index as
        tombstones until :meth:`save` compacts them out (HNSW cannot delete; this keeps every index type alike).
        """
        ids = list(dict.fromkeys(_id_list(ids, "ids to remove")))
        with self._mutating:
            unknown = next((v for v in ids if v not in self._row), None)
            if unknown is not None:
                raise UserError(f"cannot remove {unknown!r}: no such video id in the catalog")
            with self._rw.write():
                for vid in ids:
                    row = self._row.pop(vid)
                    self._alive[row] = False
                    title = self._records[row].get("title")
                    if isinstance(title, str):
                        rows = self._by_title.get(title.strip(), [])
                        if row in rows:
                            rows.remove(row)
        LOG.info("removed %d videos: %d served", len(ids), len(self))
        return len(ids)

    def save(self, path: str | Path) -> Path:
        """Write the served catalog as a complete bundle at ``path``, atomically (``write_bundle``).

        Removed videos are compacted out: the index drops them without retraining (the trained index is emptied
        and the live vectors are added again; HNSW rebuilds its graph), and this Recommender switches to that
        compacted state, so a :meth:`load` of ``path`` answers exactly as this object does after the call.
        """
        import faiss

        if self.cfg is None:
            raise UserError("this Recommender has no run config to save (load it with Recommender.load)")
        self._require_unsharded("save")
        with self._mutating:
            keep = np.flatnonzero(self._alive)
            compact = len(keep) < len(self._alive)
            index = self.index
            if compact:
                index = faiss.deserialize_index(faiss.serialize_index(self.index))
                index.reset()  # keeps the training (IVF centroids, PQ codebooks): same codes as before
                index.add(np.ascontiguousarray(self.xb[keep]))
            catalog = self.catalog.iloc[keep].reset_index(drop=True)
            embeddings = np.ascontiguousarray(self.embeddings[keep], dtype=np.float32)
            sources = self._sources.iloc[keep].reset_index(drop=True)
            skipped = list(self._skipped)

            fields = {k: v for k, v in self.manifest.items() if k not in ("format", "files")}
            contents = Bundle(self.model, self.cfg, catalog, embeddings, sources, skipped, {INDEX_FILE: index}, fields)
            out = save_bundle(path, contents)
            manifest = read_manifest(out, verify=False)
            with self._rw.write():
                if compact:
                    self._set_state(catalog, embeddings, index, sources)
                    self._mapped = False
                self.path, self.manifest = out, manifest
        LOG.info("saved %d videos to %s", len(catalog), out)
        return out

    def info(self) -> dict[str, Any]:
        """Path, videos served and the index type: for logs and health checks."""
        return {"path": str(self.path), "videos": len(self), **{k: self.manifest[k] for k in ("embed_dim", "index")}}

    def __repr__(self) -> str:
        return f"Recommender({json.dumps(self.info())})"
