"""Query encoding for serving: texts and histories -> index-ready query vectors, one model call at a time.

The index holds the unit video vectors plus, with the popularity prior, one more column (see
:mod:`multimodal_rec.model.prior`). A text query carries 0 there (pure cosine); a user query carries
``prior_query``, so its score is ``cosine + prior_coef * log1p(count)``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np
import torch

from multimodal_rec.model.multimodal import MultimodalModel, to_numpy
from multimodal_rec.model.prior import query_prior, with_prior_column

LOG = logging.getLogger(__name__)


class QueryEncoder:
    """The served model behind a lock (torch modules are not safe to call from several threads at once)."""

    def __init__(self, model: MultimodalModel) -> None:
        self.model = model
        self._lock = threading.Lock()
        self.prior_coef = model.rec_prior_coef()  # the learned weight of log1p(count), in cosine units
        self.prior_query = query_prior(self.prior_coef)  # what a user query carries in the index's prior column

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> ``xq [n, D]`` float32."""
        with self._lock, torch.inference_mode():
            return to_numpy(self.model.encode_text(list(texts)))

    def encode_histories(self, histories: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Histories (oldest first) -> ``xq [n, D]`` and attention weights ``[n, S]``."""
        with self._lock, torch.inference_mode():
            u, w = self.model.encode_user([list(h) for h in histories])
            return to_numpy(u), to_numpy(w)

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
