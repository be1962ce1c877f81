"""User (behaviour) tower: a bidirectional LSTM with additive attention over the user's history of text items.

Items enter as text-trunk features, not ids, so new users and new videos need no retraining; the attention
weights say which history items drove a recommendation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from encoders.heads import ProjectionHead


@dataclass
class UserTowerConfig:
    input_proj: int = 256  # items' text features are first projected to this width
    hidden: int = 256  # LSTM hidden size per direction
    layers: int = 1  # stacked LSTM layers
    attn_dim: int = 128  # width of the additive attention scorer
    attention: bool = True  # False = pool with the last valid step's hidden state (ablation)
    max_history: int = 50  # most recent items kept
    proj_hidden: int = 512  # hidden width of the projection MLP (0 = linear)
    dropout: float = 0.1  # dropout on the item inputs and inside the projection MLP


class UserTower(nn.Module):
    """History item features ``[B, S, H]`` + mask ``[B, S]`` -> (``[B, D]``, attention ``[B, S]``)."""

    def __init__(self, cfg: UserTowerConfig, item_dim: int, out_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_proj = nn.Sequential(nn.Linear(item_dim, cfg.input_proj), nn.GELU(), nn.Dropout(cfg.dropout))
        self.lstm = nn.LSTM(cfg.input_proj, cfg.hidden, num_layers=cfg.layers, batch_first=True, bidirectional=True)
        self.attn = nn.Sequential(nn.Linear(2 * cfg.hidden, cfg.attn_dim), nn.Tanh(), nn.Linear(cfg.attn_dim, 1))
        self.head = ProjectionHead(2 * cfg.hidden, out_dim, cfg.proj_hidden, cfg.dropout)
        self.out_dim = out_dim

    def forward_features(self, items: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled history state ``[B, 2*hidden]`` and attention weights ``[B, S]`` (zero on padding)."""
        _B, S, _ = items.shape
        mask = mask.bool()
        lengths = mask.sum(1).clamp(min=1)  # [B]
        x = self.item_proj(items)  # [B, S, P]
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=S)  # [B, S, 2*hidden]
        if self.cfg.attention:
            scores = self.attn(h).squeeze(-1)  # [B, S]
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            weights = torch.softmax(scores, dim=-1) * mask  # [B, S]; exact zeros on padding
            weights = weights / weights.sum(1, keepdim=True).clamp(min=1e-12)
        else:
            weights = torch.nn.functional.one_hot(lengths - 1, S).to(h.dtype)  # last valid step
        pooled = torch.bmm(weights.unsqueeze(1), h).squeeze(1)  # [B, 2*hidden]
        return pooled, weights

    def forward(self, items: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, weights = self.forward_features(items, mask)
        return self.head(pooled), weights  # [B, D], [B, S]
