"""Query encoding for serving: texts and histories -> index-ready query vectors, one model call at a time.

The index holds the unit video vectors plus, with the popularity prior, one more column (see
:mod:`multimodal_rec.model.prior`). A text query carries 0 there (pure cosine); a user query carries
``prior_query``, so its score is ``cosine + prior_coef * log1p(count)``.

Telling a match from noise: the text trunk is English-only, and any text gets a nearest video with some cosine.
:meth:`QueryEncoder.query_info` counts a query's tokens the tokenizer does not know (a query made only of them,
e.g. emoji, has nothing the model can read); :func:`noise_score` is the score that junk queries reach against a
catalog, the reference for a ``min_score`` (:func:`keep_above`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from encoders.heads import numpy_head
from multimodal_rec.errors import UserError
from multimodal_rec.model.multimodal import MultimodalModel, to_numpy
from multimodal_rec.model.prior import query_prior, with_prior_column
from multimodal_rec.serving.batcher import MicroBatcher
from multimodal_rec.serving.text_backends import KnownTexts, ServeConfig, TextFeatures, make_trunk

if TYPE_CHECKING:
    from multimodal_rec.serving.results import Hit

LOG = logging.getLogger(__name__)


class QueryEncoder:
    """The served model. Inference runs from many threads at once (inference mode, no shared mutable state); the
    lock guards the tokenizer, and the trunk features come from :class:`TextFeatures` (known item texts, an LRU
    cache, the micro-batched trunk: torch or ONNX Runtime, see ``serve``)."""

    def __init__(
        self,
        model: MultimodalModel,
        serve: ServeConfig | None = None,
        bundle: Path | None = None,
        known: KnownTexts | None = None,
    ) -> None:
        self.model = model
        self._lock = threading.Lock()
        self.prior_coef = model.rec_prior_coef()  # the learned weight of log1p(count), in cosine units
        self.prior_query = query_prior(self.prior_coef)  # what a user query carries in the index's prior column
        self.serve = serve or ServeConfig()
        self.serve.check()
        trunk = make_trunk(self.serve.text_backend, model, bundle, self._lock, self.serve.onnx_threads)
        self.features = TextFeatures(trunk, model.text.feat_dim, self.serve, known)
        # after an ONNX Runtime pass each torch op of the head cost up to ~1 ms (a profile): the head in numpy there
        onnx = self.serve.text_backend != "torch" and model.device.type == "cpu"
        self._head = numpy_head(model.text.head) if onnx else None
        self._serial = threading.Lock() if not self.serve.concurrent else contextlib.nullcontext()
        # concurrent histories share one user-tower pass, as query texts share trunk passes (a BiLSTM over a few
        # items is mostly per-call overhead: a profile under load put 40% of the server's CPU in one-by-one passes)
        window = self.serve.batch_window_ms / 1e3
        self.user_batcher = MicroBatcher(self._histories_now, window, self.serve.max_batch)  # type: ignore[arg-type]

    def _torch_features(self, texts: list[str]) -> torch.Tensor:
        return torch.from_numpy(self.features(texts)).to(self.model.device)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> ``xq [n, D]`` float32."""
        with self._serial:
            if self._head is not None:
                return self._head(self.features(list(texts)))
            feats = self._torch_features(list(texts))
            with torch.inference_mode():
                return to_numpy(self.model.text.forward_head(feats))

    def query_info(self, text: str) -> dict[str, Any]:
        """``{"unknown_tokens": n, "tokens": m, "in_vocabulary": bool}`` for a query, special tokens not counted:
        ``in_vocabulary`` is False when no token is known to the tokenizer (all ``[UNK]``, or none at all)."""
        tok = self.model.tokenizer
        with self._lock:  # a fast tokenizer is not safe while another thread changes its truncation settings
            ids = tok(text, add_special_tokens=False)["input_ids"]
        unk = tok.unk_token_id
        n_unknown = sum(1 for i in ids if i == unk) if unk is not None else 0
        return {"unknown_tokens": n_unknown, "tokens": len(ids), "in_vocabulary": len(ids) > n_unknown}

    def encode_histories(self, histories: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Histories (oldest first) -> ``xq [n, D]`` and attention weights ``[n, S]`` (S: at least the longest kept
        history; zero weights past each history's end)."""
        with self._serial:
            out = self.user_batcher([list(h) for h in histories])
        d = self.model.cfg.embed_dim
        return out[:, :d], out[:, d:]

    def _histories_now(self, histories: list[list[str]]) -> np.ndarray:
        """One user-tower pass: ``[n, D + S]``, the vectors then the attention weights."""
        if not histories:
            return np.zeros((0, self.model.cfg.embed_dim), np.float32)
        with torch.inference_mode():
            u, w = self.model.encode_user(histories, features=self._torch_features)
        return np.hstack([to_numpy(u), to_numpy(w)])

    def text_queries(self, texts: Sequence[str], width: int) -> np.ndarray:
        """Index-ready vectors ``[n, width]`` for texts: cosine only (0 in the prior column)."""
        return with_prior_column(self.encode_texts(texts), width, 0.0)

    def user_queries(self, histories: Sequence[Sequence[str]], width: int, prior: bool = True) -> np.ndarray:
        """Index-ready vectors ``[n, width]`` for histories: cosine + the popularity prior (unless ``prior=False``)."""
        u, _ = self.encode_histories(histories)
        return with_prior_column(u, width, self.prior_query if prior else 0.0)

    def attention(self, history: Sequence[str]) -> list[tuple[str, float]]:
        """Each kept history item (the last ``max_history``) with its attention weight in the user tower."""
        kept = list(history)[-self.model.cfg.user.max_history :]
        _, w = self.encode_histories([kept])
        return [(t, float(x)) for t, x in zip(kept, w[0][: len(kept)], strict=True)]

    def encode_videos(
        self, paths: list[str], batch_size: int = 16, workers: int = 0, backend: str = "auto"
    ) -> tuple[np.ndarray, list[str]]:
        """Video-tower embeddings of clips (see :func:`multimodal_rec.encoding.job.encode_videos`), the model
        calls under this encoder's lock so searches keep running while frames decode."""
        from multimodal_rec.encoding import encode_videos

        return encode_videos(self.model, paths, batch_size, workers, backend, self._lock)

    def encode_items(
        self, df: pd.DataFrame, enc: Any, batch_size: int = 16, workers: int = 0, backend: str = "auto"
    ) -> tuple[Any, list[str]]:
        """Item, content, text and segment vectors of videos to add (``encoding.items.encode_items``, the model
        calls under this encoder's lock): ``(ItemVectors, errors)``, one error per row ("" where encoded)."""
        from multimodal_rec.encoding.items import encode_items

        return encode_items(self.model, df, enc, batch_size, workers, backend, lock=self._lock)


# Junk the catalog cannot match: emoji, symbols, random letters, digits and non-Latin scripts (the trunk is
# English-only). Fixed, so a bundle's noise_score is the same on every load.
NOISE_QUERIES = (
    "🎬🐰", "🔥🔥🔥", "😀🎉🍕", "★☆★", "→←↑↓", "§¶†‡", "@@@###", "?!?!?!", "...", "~~~",
    "xqzv kplm", "zzzz", "qwrtpsdf", "bnmlkj hgf", "asdfgh", "lorem ipsum dolor", "foo bar baz", "blorft",
    "12345", "3.14159", "0000 9999", "a1b2c3", "赤い丸が左に動く", "日本語のテキスト", "猫が寝ている",
    "Привет мир", "καλημέρα", "مرحبا بالعالم", "שלום", "नमस्ते दुनिया", "안녕하세요", "สวัสดี",
)  # fmt: skip
NOISE_PERCENTILE = 99.0


def noise_score(search_batch: Callable[[list[str], int], list[list[Hit]]]) -> float | None:
    """The 99th percentile of the best score of each of :data:`NOISE_QUERIES` (None for an empty catalog).

    ``search_batch(texts, k)`` is the catalog's text search; a hit scoring below this is no better than junk.
    """
    best = [hits[0].score for hits in search_batch(list(NOISE_QUERIES), 1) if hits]
    return round(float(np.percentile(best, NOISE_PERCENTILE)), 4) if best else None


def query_warnings(info: dict[str, Any]) -> list[str]:
    """What a caller should know about a query's hits, from :meth:`QueryEncoder.query_info`: one line each."""
    if info["in_vocabulary"]:
        return []
    return ["the query has no word the text model knows (it reads English only): its hits are noise"]


def check_min_score(min_score: float | None) -> float | None:
    """A ``min_score`` is None or a finite number (UserError otherwise)."""
    if min_score is None:
        return None
    if isinstance(min_score, bool) or not isinstance(min_score, int | float) or not math.isfinite(min_score):
        raise UserError(f"min_score must be a finite number, got {min_score!r}")
    return float(min_score)


def keep_above(hits: list[list[Hit]], min_score: float | None) -> list[list[Hit]]:
    """Each hit list without the hits scoring below ``min_score`` (all of them when None)."""
    if min_score is None:
        return hits
    return [[h for h in row if h.score >= min_score] for row in hits]
