"""Every tower: output shape, L2 norm, masking, gradients, and the order sensitivity of temporal pooling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoders import TextTower, TextTowerConfig, UserTower, UserTowerConfig, VideoTower, VideoTowerConfig

D = 16


def _video_cfg(**kw) -> VideoTowerConfig:
    base = dict(
        trunk="resnet10",
        num_frames=4,
        image_size=32,
        spatial_grid=2,
        frame_dim=16,
        temporal_heads=2,
        proj_hidden=0,
        dropout=0.0,
    )
    return VideoTowerConfig(**{**base, **kw})


@pytest.mark.parametrize("temporal", ["transformer", "conv", "mean"])
def test_video_tower_shape_norm_grad(temporal: str) -> None:
    torch.manual_seed(0)
    tower = VideoTower(_video_cfg(temporal=temporal), D)
    frames = torch.randint(0, 256, (3, 4, 3, 32, 32), dtype=torch.uint8)
    out = tower(frames)
    assert out.shape == (3, D) and tower.out_dim == D
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert tower.head.net.weight.grad is not None and tower.head.net.weight.grad.abs().sum() > 0


def test_video_pooling_sees_frame_order() -> None:
    """A clip played backwards (left -> right) must embed differently, except with mean pooling."""
    torch.manual_seed(0)
    frames = torch.rand(2, 4, 3, 32, 32)
    reversed_ = frames.flip(1)
    cases = [("transformer", False, True), ("conv", False, True), ("mean", False, False), ("mean", True, True)]
    for temporal, frame_diff, differs in cases:  # frame differences carry the order even into a mean
        tower = VideoTower(_video_cfg(temporal=temporal, frame_diff=frame_diff), D).eval()
        with torch.no_grad():
            gap = (tower(frames) - tower(reversed_)).abs().max().item()
        assert (gap > 1e-4) == differs, (temporal, gap)


def test_unknown_trunk_and_pooling_are_refused() -> None:
    with pytest.raises(ValueError, match="temporal"):
        VideoTower(_video_cfg(temporal="lstm"), D)
    with pytest.raises(ValueError, match="resnet_nope"):
        VideoTower(_video_cfg(trunk="resnet_nope"), D)


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [("model.video.trunk", "resnet_nope", "model.video.trunk 'resnet_nope'"), ("model.video.temporal", "lstm", "lstm")],
)
def test_a_config_the_towers_cannot_build_is_a_one_line_user_error(key: str, value: str, named: str) -> None:
    """What a user typed (``--set model.video.trunk=...``) comes back by name, not as a traceback."""
    from multimodal_rec.config import load_config
    from multimodal_rec.errors import UserError
    from multimodal_rec.model.multimodal import create_model

    cfg = load_config("tiny", {key: value})
    with pytest.raises(UserError) as e:
        create_model(cfg.model)
    assert named in str(e.value) and "\n" not in str(e.value)


def _text_tower() -> TextTower:
    cfg = TextTowerConfig(
        random_init={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32},
        trainable_layers=-1,
        proj_hidden=0,
        dropout=0.0,
    )
    return TextTower(cfg, D).eval()


def test_text_tower_masks_padding() -> None:
    torch.manual_seed(0)
    tower = _text_tower()
    ids = torch.tensor([[101, 2000, 3000, 102]])
    mask = torch.ones_like(ids)
    padded_ids = torch.tensor([[101, 2000, 3000, 102, 0, 0, 0]])
    padded_mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]])
    a, b = tower(ids, mask), tower(padded_ids, padded_mask)
    assert a.shape == (1, D)
    assert torch.allclose(a, b, atol=1e-5), "padding changed the embedding"
    assert torch.allclose(a.norm(dim=-1), torch.ones(1), atol=1e-5)


def test_text_tower_frozen_trunk_has_no_trainable_trunk_params() -> None:
    cfg = TextTowerConfig(
        random_init={"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32},
        trainable_layers=0,
    )
    tower = TextTower(cfg, D)
    assert tower.trunk_frozen
    assert not any(p.requires_grad for p in tower.trunk.parameters())
    assert all(p.requires_grad for p in tower.head.parameters())
    partial = TextTower(TextTowerConfig(random_init=cfg.random_init, trainable_layers=1), D)
    trainable = {n.split(".")[2] for n, p in partial.trunk.named_parameters() if p.requires_grad and "layer." in n}
    assert trainable == {"1"}, "only the last layer should be unfrozen"


def test_user_tower_shapes_attention_and_masking() -> None:
    torch.manual_seed(0)
    tower = UserTower(UserTowerConfig(input_proj=8, hidden=8, attn_dim=8, proj_hidden=0, dropout=0.0), 12, D).eval()
    items = torch.randn(2, 5, 12)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out, w = tower(items, mask)
    assert out.shape == (2, D) and w.shape == (2, 5)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.all(w[0, 3:] == 0), "padding must get zero attention"
    assert torch.allclose(w.sum(1), torch.ones(2), atol=1e-5)
    # What sits in the padding must not matter.
    garbage = items.clone()
    garbage[0, 3:] = 100.0
    out2, _ = tower(garbage, mask)
    assert torch.allclose(out[0], out2[0], atol=1e-5)


def test_user_tower_without_attention_uses_last_step() -> None:
    tower = UserTower(UserTowerConfig(input_proj=8, hidden=8, attention=False, proj_hidden=0), 12, D).eval()
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    _, w = tower(torch.randn(1, 3, 12), mask)
    assert w.tolist() == [[0.0, 1.0, 0.0]]


def test_locked_text_head_keeps_the_trunks_space() -> None:
    """lock_head: text vectors are the normalised trunk features and the head gets no gradient (LiT)."""
    import pytest
    import torch

    from encoders import TextTower, TextTowerConfig

    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    cfg = TextTowerConfig(random_init=small, proj_hidden=0, lock_head=True)
    tower = TextTower(cfg, 32).eval()
    assert not any(p.requires_grad for p in tower.head.parameters())
    ids = torch.randint(0, 1000, (3, 7))
    mask = torch.ones_like(ids)
    feats = tower.forward_features(ids, mask)
    torch.testing.assert_close(tower(ids, mask), torch.nn.functional.normalize(feats, dim=-1))
    with pytest.raises(ValueError, match=r"lock_head needs .*embed_dim: 32"):
        TextTower(TextTowerConfig(random_init=small, proj_hidden=0, lock_head=True), 16)
    with pytest.raises(ValueError, match="lock_head needs"):
        TextTower(TextTowerConfig(random_init=small, proj_hidden=8, lock_head=True), 32)


@pytest.mark.parametrize("hidden,approximate", [(0, "none"), (32, "none"), (32, "tanh")])
def test_numpy_head_equals_the_torch_head(hidden: int, approximate: str) -> None:
    """The serving path's numpy head gives the torch head's unit vectors (both head forms, both GELUs)."""
    from encoders.heads import ProjectionHead, numpy_head

    torch.manual_seed(0)
    head = ProjectionHead(24, 16, hidden, dropout=0.5).eval()
    if hidden:
        head.net[1].approximate = approximate
    x = torch.randn(5, 24)
    fn = numpy_head(head)
    assert fn is not None
    with torch.inference_mode():
        want = head(x).numpy()
    got = fn(x.numpy())
    assert got.dtype == np.float32 and got.shape == (5, 16)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    head.net = torch.nn.Sequential(torch.nn.Linear(24, 16), torch.nn.ReLU())  # a layer it does not know
    assert numpy_head(head) is None


def test_numpy_gelu_matches_torch_over_a_wide_range() -> None:
    from encoders.heads import _gelu

    x = torch.linspace(-12, 12, 4001)
    for a in ("none", "tanh"):
        want = torch.nn.functional.gelu(x, approximate=a).numpy()
        np.testing.assert_allclose(_gelu(x.numpy(), a), want, atol=2e-6, rtol=1e-6)
