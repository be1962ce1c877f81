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


def brute_force_infonce(q, keys, scale, item_ids=None, key_bias=None) -> torch.Tensor:
    """Row by row, in float64: -log softmax of the row's own column over every column that is not another copy
    of the row's item (the InfoNCE the loss must compute), averaged over rows."""
    q, keys, scale = q.double(), keys.double(), scale.double()
    total = torch.zeros((), dtype=torch.float64)
    for i in range(len(q)):
        cols = [j for j in range(len(keys)) if j == i or item_ids is None or item_ids[j] != item_ids[i]]
        logits = torch.stack([scale * (q[i] @ keys[j]) + (0.0 if key_bias is None else key_bias[j]) for j in cols])
        total = total - (logits[cols.index(i)] - torch.logsumexp(logits, 0))
    return total / len(q)


def test_extra_keys_are_more_negatives_and_temperature_learns() -> None:
    torch.manual_seed(0)
    q = F.normalize(torch.randn(4, 16), dim=-1)
    keys = torch.cat([q + 0.1 * torch.randn(4, 16), F.normalize(torch.randn(6, 16), dim=-1)])
    loss = InfoNCELoss(0.07, symmetric=False)
    value = loss(q, keys, item_ids=torch.arange(10))
    value.backward()
    assert loss.logit_scale.grad is not None and loss.logit_scale.grad != 0
    # the value and the temperature's gradient are exactly InfoNCE over the 4 + 6 columns
    scale = loss.logit_scale.detach().double().requires_grad_()
    ref = brute_force_infonce(q, keys, scale.exp())
    (ref_grad,) = torch.autograd.grad(ref, scale)
    assert math.isclose(value.item(), ref.item(), rel_tol=1e-5)
    assert math.isclose(loss.logit_scale.grad.item(), ref_grad.item(), rel_tol=1e-4)
    assert value.item() > InfoNCELoss(0.07, symmetric=False)(q, keys[:4]).item()  # more negatives: harder


def test_extra_keys_with_repeated_items_and_a_prior_match_brute_force() -> None:
    """Extra columns that repeat a row's item are masked (only for that row); the per-key bias enters every
    logit of its column."""
    torch.manual_seed(1)
    q = F.normalize(torch.randn(5, 8), dim=-1)
    keys = F.normalize(torch.randn(12, 8), dim=-1)
    ids = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8])  # rows 1 and 3 share item 1; 3 and 5 recur as extras
    keys[9], keys[8], keys[10] = q[0], q[4], q[4]  # copies of rows 0 and 4's items, as close as can be
    bias = torch.randn(12)
    loss = InfoNCELoss(0.1, symmetric=False)
    value = loss(q, keys, item_ids=ids, key_bias=bias)
    ref = brute_force_infonce(q, keys, loss.scale().detach(), item_ids=ids, key_bias=bias)
    assert math.isclose(value.item(), ref.item(), rel_tol=1e-5)
    unmasked = brute_force_infonce(q, keys, loss.scale().detach(), key_bias=bias)
    assert unmasked.item() > value.item() + 0.5  # unmasked, the copies would be strong false negatives
