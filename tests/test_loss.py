"""The contrastive loss: perfect alignment -> low loss, false negatives masked, temperature learnable."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from multimodal_rec.model.loss import InfoNCELoss


def test_aligned_pairs_score_lower_than_shuffled() -> None:
    torch.manual_seed(0)
    x = F.normalize(torch.randn(8, 16), dim=-1)
    loss = InfoNCELoss(0.05)
    aligned = loss(x, x)
    shuffled = loss(x, x.roll(1, 0))
    assert aligned < 0.1 < shuffled


def test_uniform_logits_give_log_batch() -> None:
    loss = InfoNCELoss(1.0)
    q = torch.zeros(4, 8)
    q[:, 0] = 1.0  # identical vectors: every logit equal
    assert math.isclose(loss(q, q).item(), math.log(4), rel_tol=1e-5)


def test_same_video_twice_is_not_a_negative() -> None:
    """Rows 0 and 1 hold the same video: its copy must not be pushed away (masked, not a negative)."""
    torch.manual_seed(0)
    v = F.normalize(torch.randn(4, 16), dim=-1)
    v[1] = v[0]
    t = v.clone()
    loss = InfoNCELoss(0.05)
    unmasked = loss(t, v)
    masked = loss(t, v, item_ids=torch.tensor([7, 7, 8, 9]))
    assert masked < 0.01 < unmasked


def test_extra_keys_are_more_negatives_and_temperature_learns() -> None:
    torch.manual_seed(0)
    q = F.normalize(torch.randn(4, 16), dim=-1)
    keys = torch.cat([q + 0.1 * torch.randn(4, 16), F.normalize(torch.randn(6, 16), dim=-1)])
    loss = InfoNCELoss(0.07, symmetric=False)
    value = loss(q, keys, item_ids=torch.arange(10))
    value.backward()
    assert loss.logit_scale.grad is not None and loss.logit_scale.grad != 0
