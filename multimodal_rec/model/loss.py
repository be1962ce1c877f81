"""Contrastive losses: symmetric text<->video InfoNCE and user-history -> next-video InfoNCE."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _same_item_mask(row_ids: torch.Tensor, col_ids: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` True where a column holds the same item as the row's positive but is not that positive."""
    same = row_ids[:, None] == col_ids[None, :]
    pos = torch.zeros_like(same)
    pos[torch.arange(len(row_ids)), torch.arange(len(row_ids))] = True
    return same & ~pos


class InfoNCELoss(nn.Module):
    """InfoNCE with a learnable temperature; in-batch negatives; false negatives (same item) masked.

    Row ``i`` of ``queries`` has its positive in column ``i`` of ``keys``; ``keys`` may hold extra columns
    (more negatives). With ``symmetric=True`` the key->query direction is added (needs square logits).
    """

    def __init__(self, init_temperature: float = 0.07, symmetric: bool = True, max_scale: float = 100.0) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.symmetric = symmetric
        self.max_scale = max_scale

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=self.max_scale)

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        item_ids: torch.Tensor | None = None,
        key_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, N = queries.shape[0], keys.shape[0]
        logits = self.scale() * queries @ keys.t()  # [B, N]
        if key_bias is not None:
            logits = logits + key_bias[None, :N]  # per-item prior (e.g. popularity), same for every query
        if item_ids is not None:
            logits = logits.masked_fill(_same_item_mask(item_ids[:B], item_ids[:N]), float("-inf"))
        target = torch.arange(B, device=queries.device)
        loss = F.cross_entropy(logits, target)
        if self.symmetric:
            sq = logits[:, :B].t()  # [B, B]: keys -> queries
            loss = 0.5 * (loss + F.cross_entropy(sq, target))
        return loss
