"""Text-trunk features of the texts a history item that names a catalog video is read as, stored in the bundle.

Serving reads a history item that is a served video id as that video's text (the first non-blank of
:data:`ITEM_TEXT_COLUMNS`, as ``serving.catalog`` does), and a title typed as free text is the same string: with
these features stored at encode time, neither needs a pass through the text trunk when serving. Keyed by text, not
row, so a lookup is exact by construction (a text not stored simply goes through the trunk).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from multimodal_rec.model.text_features import frozen_trunk_features

LOG = logging.getLogger(__name__)
ITEM_TEXT_COLUMNS = ("title", "caption", "description")  # the same order as serving.catalog.TEXT_COLUMNS


def item_texts(catalog: pd.DataFrame) -> list[str]:
    """Each video's history text (the first non-blank of :data:`ITEM_TEXT_COLUMNS`, stripped), distinct, in order."""
    cols = [c for c in ITEM_TEXT_COLUMNS if c in catalog.columns]
    out: dict[str, None] = {}
    for rec in catalog[cols].to_dict("records") if cols else []:
        for col in cols:
            value = rec.get(col)
            if isinstance(value, str) and value.strip():
                out[value.strip()] = None
                break
    return list(out)


def trunk_features_of(model: Any, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Float32 text-trunk features ``[M, H]`` of ``texts`` (the trunk in inference mode, no feature cache)."""
    if not texts:
        return np.zeros((0, model.text.feat_dim), np.float32)
    with torch.inference_mode():
        feats = frozen_trunk_features(model.text, model.tokenizer, list(texts), batch_size, model.device)
    return feats.float().cpu().numpy()


def known_text_features(model: Any, catalog: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """``(features [M, H], texts)`` for a catalog: what ``text_features.npy`` / ``.parquet`` hold."""
    texts = item_texts(catalog)
    LOG.info("text-trunk features of %d item texts", len(texts))
    return trunk_features_of(model, texts), texts
