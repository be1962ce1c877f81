"""Projection head shared by the three towers: trunk features -> the joint embedding space."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    """Two-layer MLP (or one linear layer when ``hidden == 0``) followed by L2 normalisation."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        if hidden > 0:
            self.net: nn.Module = nn.Sequential(
                nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim)
            )
        else:
            self.net = nn.Linear(in_dim, out_dim)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self.net(x)  # [B, D]
        return F.normalize(x, dim=-1) if normalize else x


def numpy_head(head: ProjectionHead) -> Callable[[np.ndarray], np.ndarray] | None:
    """``head`` in inference as a numpy function: ``[B, in]`` float32 features -> unit ``[B, out]`` float32 (equal to
    ``head(x)`` within float rounding), on a snapshot of its weights; None when it holds a layer this does not know.

    For serving one query at a time on the CPU: right after an ONNX Runtime pass, each torch call of the head cost
    up to ~1 ms of a ~4.5 ms query in a profile (a one-op torch GELU alone ~1 ms); numpy's take ~0.05 ms."""
    layers = list(head.net) if isinstance(head.net, nn.Sequential) else [head.net]
    steps: list[Callable[[np.ndarray], np.ndarray]] = []
    for layer in layers:
        if isinstance(layer, nn.Linear):
            w = layer.weight.detach().cpu().float().numpy().T.copy()  # [in, out]
            b = None if layer.bias is None else layer.bias.detach().cpu().float().numpy().copy()
            steps.append(lambda x, w=w, b=b: x @ w if b is None else x @ w + b)
        elif isinstance(layer, nn.GELU):
            steps.append(lambda x, a=layer.approximate: _gelu(x, a))
        elif not isinstance(layer, nn.Dropout | nn.Identity):  # both are the identity in inference
            return None

    def forward(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        for step in steps:
            x = step(x)
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # as F.normalize

    return forward


def _erf(x: np.ndarray) -> np.ndarray:
    """erf in float64 (Abramowitz & Stegun 7.1.26, absolute error < 1.5e-7): numpy has none, and no scipy here."""
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(x) * (1.0 - poly * np.exp(-x * x))


def _gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    """``F.gelu`` in numpy: exact (erf) or ``"tanh"``."""
    x64 = x.astype(np.float64)
    if approximate == "tanh":
        out = 0.5 * x64 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x64 + 0.044715 * x64**3)))
    else:
        out = 0.5 * x64 * (1.0 + _erf(x64 / np.sqrt(2.0)))
    return out.astype(np.float32)
