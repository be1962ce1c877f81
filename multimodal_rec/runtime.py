"""Process-wide runtime choices: the torch device and the seeds. Nothing here runs at import time."""

from __future__ import annotations

import random

import numpy as np
import torch

from multimodal_rec.errors import UserError


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when a GPU is visible, else the CPU; ``cuda`` without a GPU is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' requested but no CUDA GPU is available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
