"""Fine-tuning a pretrained image-text model (configs/clip.yaml): frozen trunks' features cached once, partial
unfreezing of the vision trunk, trunk learning rate, identity heads."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from multimodal_rec.config import load_config
from multimodal_rec.data.synth.clip_dir import make_clip_dir
from multimodal_rec.errors import UserError
from multimodal_rec.model.multimodal import create_model
from multimodal_rec.model.pretrained import pretrained_config


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip_dir(tmp_path_factory.mktemp("pretrained") / "clip")


def _cfg(clip_dir: Path, **video):
    cfg = pretrained_config(load_config("clip"), clip_dir)
    cfg.model.video = dataclasses.replace(cfg.model.video, num_frames=4, **video)
    cfg.train.batch_size = cfg.train.rec_batch_size = 8
    return cfg


def test_cached_trunk_features_give_the_same_losses_and_gradients(clip_dir: Path, world: Path, tmp_path: Path):
    """A frozen vision trunk's features computed once give exactly the step the frames would."""
    from multimodal_rec.data.tables import load_dataset
    from multimodal_rec.training.train import ContrastiveTask, cache_trunk_features, prepare_data

    cfg = _cfg(clip_dir, temporal="transformer", temporal_heads=2)  # a trained temporal module over the features
    ds = load_dataset(world)
    results = []
    for cached in (False, True):
        torch.manual_seed(0)
        model = create_model(cfg.model).train()
        data = prepare_data(cfg, ds, tmp_path / "cache")
        if cached:
            data.trunk_features = cache_trunk_features(model, data.frames, batch_size=5)
            assert data.trunk_features.shape == (len(data.video_ids), 4, cfg.model.embed_dim)
        task = ContrastiveTask(model, cfg, data)
        model.eval()  # no dropout anywhere (the user tower's too): the two passes must be comparable
        batch = task.batches(0)[0]
        losses = task.step(batch, 0)
        losses["loss"].backward()
        grad = model.video.head.net.weight.grad.clone()
        results.append((float(losses["loss"].detach()), grad))
        assert not any(p.grad is not None for p in model.video.cnn.parameters())  # the trunk stays frozen
    (loss_a, grad_a), (loss_b, grad_b) = results
    assert loss_a == pytest.approx(loss_b, abs=1e-5)
    torch.testing.assert_close(grad_a, grad_b, atol=1e-5, rtol=1e-4)


def test_partial_unfreezing_and_trunk_learning_rate(clip_dir: Path) -> None:
    from multimodal_rec.training.train import make_optimizer_groups

    cfg = _cfg(clip_dir, trainable_layers=1)
    model = create_model(cfg.model)
    trained = {n for n, p in model.video.cnn.named_parameters() if p.requires_grad}
    assert trained and not model.video.trunk_frozen
    assert all(n.startswith(("vision.encoder.layers.1.", "vision.post_layernorm.", "projection.")) for n in trained)
    assert any(n.startswith("projection.") for n in trained) and any(".layers.1." in n for n in trained)
    groups = make_optimizer_groups(model, cfg)
    trunk_group = next(g for g in groups if g["lr"] == cfg.train.trunk_lr)
    assert {id(p) for p in trunk_group["params"]} == {id(p) for p in model.video.cnn.parameters() if p.requires_grad}
    head = {id(p) for p in model.video.head.parameters()}
    assert head <= {id(p) for p in groups[0]["params"]} and groups[0]["lr"] == cfg.train.lr
    with pytest.raises(UserError, match="trainable_layers 3: the vision trunk has 2 layers"):
        create_model(_cfg(clip_dir, trainable_layers=3).model)
    with pytest.raises(UserError, match="a CNN trunk is trained whole"):
        create_model(
            dataclasses.replace(
                load_config("tiny").model,
                video=load_config("tiny").model.video.__class__(trunk="resnet10", trainable_layers=2),
            )
        )


def test_frozen_trunk_stays_in_inference_mode(clip_dir: Path) -> None:
    model = create_model(_cfg(clip_dir).model).train()
    assert model.video.trunk_frozen and not model.video.cnn.training and model.video.head.training


def test_identity_heads_start_in_the_models_own_space(clip_dir: Path) -> None:
    cfg = _cfg(clip_dir)
    model = create_model(cfg.model).eval()
    with torch.no_grad():
        feats = model.text_features(["a red circle"])
        torch.testing.assert_close(model.encode_text(["a red circle"]), feats / feats.norm(dim=-1, keepdim=True))
    bad = dataclasses.replace(cfg.model, text=dataclasses.replace(cfg.model.text, proj_hidden=16))
    with pytest.raises(
        UserError, match=r"heads_init identity needs a linear text head .*text\.proj_hidden: 0 .*\(now: an MLP head"
    ):
        create_model(bad)
    with pytest.raises(UserError, match="heads_init must be random or identity"):
        create_model(dataclasses.replace(cfg.model, heads_init="zeros"))


def test_resume_a_run_from_a_pretrained_directory(clip_dir: Path, world: Path, tmp_path: Path) -> None:
    """The checkpoint records the trunks' architectures (hf_arch); resume still sees the same model config."""
    from multimodal_rec.training.train import train

    cfg = _cfg(clip_dir)
    cfg.train.epochs, cfg.train.max_steps = 2, 2
    assert train(cfg, world, tmp_path / "run").steps == 2
    cfg.train.max_steps = 0
    assert train(cfg, world, tmp_path / "run", resume=True).steps > 2
