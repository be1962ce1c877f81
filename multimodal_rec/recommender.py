"""Serving: load a bundle, answer text searches and history-based recommendations."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from multimodal_rec.bundle import read_manifest
from multimodal_rec.errors import UserError
from multimodal_rec.index import search as index_search
from multimodal_rec.model import MultimodalModel, load_model, to_numpy

LOG = logging.getLogger(__name__)
MAX_K = 1000


@dataclass
class Hit:
    """One ranked video: id, cosine score, 1-based rank and the catalog's metadata columns."""

    video_id: str
    score: float
    rank: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"video_id": self.video_id, "score": round(self.score, 6), "rank": self.rank, **self.metadata}


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


class Recommender:
    """A loaded bundle. Reads are safe from many threads (the model runs under a lock, FAISS reads in parallel)."""

    def __init__(
        self,
        path: Path,
        model: MultimodalModel,
        manifest: dict[str, Any],
        catalog: pd.DataFrame,
        embeddings: np.ndarray,
        index: Any,
    ) -> None:
        self.path, self.model, self.manifest = path, model, manifest
        self.catalog, self.embeddings, self.index = catalog, embeddings, index
        self.video_ids: list[str] = list(catalog["video_id"].astype(str))
        self._row = {v: i for i, v in enumerate(self.video_ids)}
        self._meta_cols = [c for c in catalog.columns if c != "video_id"]
        self._records = catalog[self._meta_cols].to_dict("records")
        self._lock = threading.Lock()
        from multimodal_rec.encode import PRIOR_SCALE, index_vectors

        self.prior_coef = model.rec_prior_coef()
        self._prior_query = self.prior_coef * PRIOR_SCALE  # the index column holds log1p(count) / PRIOR_SCALE
        self.xb = index_vectors(embeddings, catalog, model.cfg.popularity_prior)  # what the index holds

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", verify: bool = True) -> Recommender:
        """Load a bundle written by ``mmrec encode``; checksums are verified unless ``verify=False``."""
        from transformers import AutoTokenizer

        from multimodal_rec.index import read_bundle_index

        path = Path(path)
        manifest = read_manifest(path, verify=verify)
        model, _ = load_model(path, device)
        model.tokenizer = AutoTokenizer.from_pretrained(str(path / "tokenizer"), local_files_only=True)
        model.cache_text_features = False  # a server sees endless distinct queries: never keep them
        catalog = pd.read_parquet(path / "catalog.parquet")
        embeddings = np.load(path / "embeddings.npy")
        index = read_bundle_index(path, manifest)  # index.faiss, or the shards merged (faiss.IndexShards)
        if not (len(catalog) == embeddings.shape[0] == index.ntotal == manifest["count"]) or index.d not in (
            embeddings.shape[1],
            embeddings.shape[1] + 1,
        ):
            raise UserError(f"bundle {path} is inconsistent: catalog, embeddings and index sizes differ")
        return cls(path, model, manifest, catalog, embeddings, index)

    def __len__(self) -> int:
        return len(self.video_ids)

    def _augment(self, xq: np.ndarray, prior: float) -> np.ndarray:
        """Pad query vectors to the index's width (the popularity-prior column) with ``prior``."""
        if self.xb.shape[1] == xq.shape[1]:
            return xq
        return np.hstack([xq, np.full((len(xq), 1), prior, dtype=np.float32)])

    def text_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Index-ready query vectors for texts (cosine similarity; no popularity prior)."""
        return self._augment(self.encode_queries(texts), 0.0)

    def user_queries(self, histories: Sequence[Sequence[str]], prior: bool = True) -> np.ndarray:
        """Index-ready query vectors for histories: cosine + the learned popularity prior (unless ``prior=False``)."""
        u, _ = self.encode_histories(histories)
        return self._augment(u, self._prior_query if prior else 0.0)

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
    def _hits(self, D: np.ndarray, I: np.ndarray, k: int, exclude: set[int]) -> list[Hit]:  # noqa: E741
        hits: list[Hit] = []
        for score, row in zip(D, I, strict=True):
            if row < 0 or row in exclude:
                continue
            hits.append(Hit(self.video_ids[row], float(score), len(hits) + 1, dict(self._records[row])))
            if len(hits) == k:
                break
        return hits

    def search_vectors(self, xq: np.ndarray, k: int, exclude: Iterable[str] = ()) -> list[list[Hit]]:
        """Top-``k`` hits for each query vector, skipping ``exclude`` ids."""
        ex = {self._row[v] for v in exclude if v in self._row}
        D, I = index_search(self.index, xq, k + len(ex))  # noqa: E741
        return [self._hits(d, i, k, ex) for d, i in zip(D, I, strict=True)]

    def search(self, text: str, k: int = 10) -> list[Hit]:
        """Videos that match a text query, best first."""
        return self.search_batch([text], k)[0]

    def search_batch(self, texts: Sequence[str], k: int = 10) -> list[list[Hit]]:
        k = _check_k(k)
        if not texts:
            raise UserError("no queries given")
        for t in texts:
            _check_text(t)
        return self.search_vectors(self.text_queries(texts), k)

    def recommend(self, history: Sequence[str], k: int = 10, exclude: Iterable[str] = ()) -> list[Hit]:
        """Videos a user will want next, from the texts they engaged with (oldest first)."""
        k = _check_k(k)
        if isinstance(history, str) or not history:
            raise UserError("history must be a non-empty list of texts (oldest first)")
        for t in history:
            _check_text(t, "each history item")
        return self.search_vectors(self.user_queries([history]), k, exclude)[0]

    def explain(self, history: Sequence[str]) -> list[tuple[str, float]]:
        """The attention weight of each history item: which items drove the recommendation."""
        if isinstance(history, str) or not history:
            raise UserError("history must be a non-empty list of texts (oldest first)")
        kept = list(history)[-self.model.cfg.user.max_history :]
        _, w = self.encode_histories([kept])
        return [(t, float(x)) for t, x in zip(kept, w[0][: len(kept)], strict=True)]

    def info(self) -> dict[str, Any]:
        return {"path": str(self.path), "videos": len(self), **{k: self.manifest[k] for k in ("embed_dim", "index")}}

    def __repr__(self) -> str:
        return f"Recommender({json.dumps(self.info())})"
