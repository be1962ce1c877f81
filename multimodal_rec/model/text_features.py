"""Text-trunk features, in one place: the pooled features ``[N, H]`` of a text tower's trunk.

The combined model reads them through :meth:`MultimodalModel.text_features` (with a per-string cache for a
frozen trunk); the text-item recommender of ``mmrec eval --dataset`` computes them once per item with
:func:`text_features`. Both tokenize and pool the same way, so equal texts get equal features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from encoders import TextTower, TextTowerConfig
from multimodal_rec.errors import InfrastructureError


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Padded, truncated token ids and attention mask ``[B, L]`` on ``device``."""
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}


def trunk_features(
    tower: TextTower, tokenizer: Any, texts: Sequence[str], batch_size: int, device: torch.device
) -> torch.Tensor:
    """Trunk features ``[N, H]`` in chunks of ``batch_size``; gradients flow where the trunk trains."""
    texts = list(texts)
    chunks = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    L = tower.cfg.max_length
    return torch.cat([tower.forward_features(**tokenize(tokenizer, c, L, device)) for c in chunks])


@torch.no_grad()
def frozen_trunk_features(
    tower: TextTower, tokenizer: Any, texts: Sequence[str], batch_size: int, device: torch.device
) -> torch.Tensor:
    """Float32 trunk features ``[N, H]`` without gradient, the trunk run as at inference (no dropout)."""
    was_training = tower.trunk.training
    tower.trunk.eval()
    try:
        return trunk_features(tower, tokenizer, texts, batch_size, device).float()
    finally:
        tower.trunk.train(was_training)


def text_features(texts: list[str], cfg: TextTowerConfig | None = None, batch_size: int = 128) -> np.ndarray:
    """Frozen trunk features ``[N, H]`` of ``texts`` on the CPU (MiniLM by default), e.g. once per catalog item."""
    from encoders.text import TextModelUnavailable, load_tokenizer

    cfg = cfg or TextTowerConfig()
    try:
        tower = TextTower(cfg, 8)
    except TextModelUnavailable as e:  # the environment, not the input: one line, as create_model does
        raise InfrastructureError(str(e)) from None
    if not texts:
        return np.zeros((0, tower.feat_dim), np.float32)
    return frozen_trunk_features(tower, load_tokenizer(cfg), texts, batch_size, torch.device("cpu")).numpy()
