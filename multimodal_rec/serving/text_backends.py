"""Where the text-trunk features of served queries come from, cheapest first.

A query text (a search, or a history item) needs the pooled trunk features ``[H]``; the head (search) or the user
tower (recommend) runs on them in torch. :class:`TextFeatures` looks each text up in

1. the bundle's known item texts (``text_features.npy``: a history item that names a catalog video, by id or exact
   title, never runs the trunk; see :mod:`multimodal_rec.encoding.known_texts`),
2. an LRU cache of recent query texts (``query_cache`` entries of ``[H]`` float32: texts and vectors, no user; 0 =
   off, for deployments that must not keep queries in memory),
3. else the trunk (``torch``, or ``onnx`` / ``onnx-int8`` on ONNX Runtime), through a :class:`MicroBatcher`, so
   concurrent requests share one forward pass.

:class:`ServeConfig` holds these settings (``Recommender.load(..., serve=ServeConfig(...))``; the CLI's
``--text-backend``).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch

from multimodal_rec.errors import UserError
from multimodal_rec.model.text_features import tokenize
from multimodal_rec.serving.batcher import MicroBatcher

LOG = logging.getLogger(__name__)
TEXT_BACKENDS = ("torch", "onnx", "onnx-int8")


@dataclass
class ServeConfig:
    text_backend: str = "torch"  # what runs the text trunk for queries: torch, onnx (fp32) or onnx-int8
    onnx_threads: int = 1  # ONNX Runtime intra-op threads for a trunk pass (0: as many as torch uses in this process)
    query_cache: int = 4096  # recent query texts whose trunk features are kept (LRU); 0 = off (privacy)
    batch_window_ms: float = 2.0  # under concurrency, wait up to this long to batch more queries (0: no wait)
    max_batch: int = 64  # at most this many texts in one trunk pass
    known_texts: bool = True  # use the bundle's stored trunk features of item texts (text_features.npy)
    concurrent: bool = True  # False: one query encoding at a time under one lock, as before issue 18 (benchmarks)
    synonyms: str | None = None  # a synonyms / query-rewrite file (Solr format) for every query (mmrec serve only)

    def check(self) -> None:
        """One line for a setting that cannot be meant."""
        if self.text_backend not in TEXT_BACKENDS:
            raise UserError(f"text backend must be one of {', '.join(TEXT_BACKENDS)}, got {self.text_backend!r}")
        for name in ("onnx_threads", "query_cache", "max_batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "max_batch" else 0):
                raise UserError(f"serve.{name} must be an integer >= {1 if name == 'max_batch' else 0}, got {v!r}")
        for name in ("known_texts", "concurrent"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"serve.{name} must be true or false, got {getattr(self, name)!r}")
        w = self.batch_window_ms
        if isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w <= 100:
            raise UserError(f"serve.batch_window_ms must be a number in [0, 100], got {w!r}")


class QueryOptions(TypedDict, total=False):
    """The query keyword arguments of ``Recommender.load``: ``text_backend`` (torch, onnx, onnx-int8) overrides
    ``serve.text_backend``."""

    text_backend: str | None
    serve: ServeConfig | None


def serve_config(serve: ServeConfig | None = None, text_backend: str | None = None) -> ServeConfig:
    """``serve`` (default: all defaults) with ``text_backend`` when given, checked; a copy, the caller's unchanged."""
    out = dataclasses.replace(serve or ServeConfig(), **({"text_backend": text_backend} if text_backend else {}))
    out.check()
    return out


class TorchTrunk:
    """Texts -> pooled trunk features ``[N, H]`` float32 with the model's own torch trunk (inference mode)."""

    name = "torch"

    def __init__(self, model: Any, lock: threading.Lock) -> None:
        self.model, self.lock = model, lock  # the lock guards the tokenizer only: inference itself is thread-safe

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        m = self.model
        if not texts:
            return np.zeros((0, m.text.feat_dim), np.float32)
        with self.lock:
            enc = tokenize(m.tokenizer, texts, m.cfg.text.max_length, m.device)
        with torch.inference_mode():
            return m.text.forward_features(**enc).float().cpu().numpy()


def make_trunk(name: str, model: Any, bundle: Path | None, lock: threading.Lock, threads: int = 0) -> Any:
    """The trunk backend called ``name`` (:data:`TEXT_BACKENDS`)."""
    if name == "torch":
        return TorchTrunk(model, lock)
    if name in ("onnx", "onnx-int8"):
        if model.device.type != "cpu":
            raise UserError(f"text backend {name} runs on the CPU: load the bundle with device='cpu'")
        from multimodal_rec.serving.onnx_trunk import OnnxTrunk

        return OnnxTrunk(model, bundle, lock, int8=name == "onnx-int8", threads=threads)
    raise UserError(f"text backend must be one of {', '.join(TEXT_BACKENDS)}, got {name!r}")


class VectorCache:
    """A bounded LRU map text -> read-only ``[H]`` float32 vector, safe from many threads; size 0 keeps nothing."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, text: str) -> np.ndarray | None:
        if self.size == 0:
            return None
        with self._lock:
            v = self._items.get(text)
            if v is None:
                self.misses += 1
                return None
            self._items.move_to_end(text)
            self.hits += 1
            return v

    def put(self, text: str, vector: np.ndarray) -> None:
        if self.size == 0:
            return
        v = np.array(vector, dtype=np.float32)  # a copy the caller cannot change
        v.flags.writeable = False
        with self._lock:
            self._items[text] = v
            self._items.move_to_end(text)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


class KnownTexts:
    """The bundle's stored trunk features of item texts, looked up by exact text (None: not stored)."""

    def __init__(self, features: np.ndarray, texts: Sequence[str]) -> None:
        self.features, self.texts = features, list(texts)
        self.row = {t: i for i, t in enumerate(self.texts)}

    def __len__(self) -> int:
        return len(self.texts)

    def get(self, text: str) -> np.ndarray | None:
        i = self.row.get(text)
        return None if i is None else np.asarray(self.features[i], dtype=np.float32)


class TextFeatures:
    """Texts -> trunk features ``[N, H]`` float32: known item texts, then the LRU cache, then the (batched) trunk."""

    def __init__(self, trunk: Any, feat_dim: int, cfg: ServeConfig, known: KnownTexts | None = None) -> None:
        self.trunk, self.feat_dim, self.known = trunk, int(feat_dim), known if cfg.known_texts else None
        self.cache = VectorCache(cfg.query_cache)
        self.batcher = MicroBatcher(trunk, cfg.batch_window_ms / 1e3, cfg.max_batch)
        self.backend = getattr(trunk, "name", "torch")

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self.feat_dim), np.float32)
        todo: dict[str, list[int]] = {}
        for i, t in enumerate(texts):
            v = self.known.get(t) if self.known is not None else None
            if v is None:
                v = self.cache.get(t)
            if v is None:
                todo.setdefault(t, []).append(i)
            else:
                out[i] = v
        if todo:
            feats = self.batcher(list(todo))
            for (t, rows), v in zip(todo.items(), feats, strict=True):
                out[rows] = v
                self.cache.put(t, v)
        return out

    def stats(self) -> dict[str, Any]:
        """Counters for /metrics and benchmarks: cache hits, trunk passes and the requests they served."""
        return {
            "backend": self.backend,
            "known_texts": len(self.known) if self.known is not None else 0,
            "cache_size": len(self.cache),
            "cache_hits": self.cache.hits,
            "cache_misses": self.cache.misses,
            "trunk_batches": self.batcher.batches,
            "trunk_requests": self.batcher.requests,
        }
