"""The video tower's ``hf`` frame trunk: the vision half of a local Hugging Face image-text directory, per frame.

Tiny random CLIP models saved to temporary directories (no network): a full ``CLIPModel`` and a bare
``CLIPVisionModel``, each with a ``CLIPImageProcessor`` whose mean/std differ from ImageNet's and CLIP's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from encoders import VideoTower, VideoTowerConfig
from encoders.weights import PretrainedWeightsError

VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=99)
MEAN, STD = [0.3, 0.5, 0.7], [0.2, 0.25, 0.3]  # neither ImageNet's nor CLIP's: the test sees which one is used
PROJ, D, T = 16, 8, 4


def _processor(path: Path, mean=MEAN, std=STD) -> None:
    from transformers import CLIPImageProcessor

    CLIPImageProcessor(size=32, crop_size=32, image_mean=mean, image_std=std).save_pretrained(path)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    from transformers import (
        CLIPConfig,
        CLIPModel,
        CLIPVisionConfig,
        CLIPVisionModel,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
    )

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("hf")
    out = {"full": root / "clip", "vision": root / "clip_vision", "siglip": root / "siglip"}
    CLIPModel(CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=PROJ)).save_pretrained(out["full"])
    CLIPVisionModel(CLIPVisionConfig(**VISION)).save_pretrained(out["vision"])
    _processor(out["full"])
    _processor(out["vision"])
    siglip = SiglipConfig(text_config={**TEXT, "max_position_embeddings": 16}, vision_config=VISION)
    SiglipModel(siglip).save_pretrained(out["siglip"])
    SiglipImageProcessor(size={"height": 32, "width": 32}, image_mean=MEAN, image_std=STD).save_pretrained(
        out["siglip"]
    )
    return out


def _cfg(path: Path | None, **kw) -> VideoTowerConfig:
    base = dict(
        trunk="hf",
        pretrained_path=str(path) if path else None,
        frame_diff=False,
        spatial_grid=1,
        frame_dim=PROJ,
        image_size=32,
        num_frames=T,
        temporal="mean",
        temporal_heads=2,
        proj_hidden=0,
        dropout=0.0,
    )
    return VideoTowerConfig(**{**base, **kw})


def _frames(B: int = 2, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (B, T, 3, size, size), dtype=torch.uint8, generator=g)


def _direct(path: Path, frames: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    """Per-frame embeddings computed with transformers alone: ``[B, T, C]``."""
    from transformers import CLIPModel, CLIPVisionModel, SiglipModel

    B = frames.shape[0]
    x = frames.flatten(0, 1).float() / 255.0
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    model_type = json.loads((path / "config.json").read_text())["model_type"]
    if model_type == "siglip":  # no projection: the attention-pooled output is the embedding
        emb = SiglipModel.from_pretrained(path, local_files_only=True).eval().vision_model(pixel_values=x).pooler_output
    elif model_type == "clip":
        m = CLIPModel.from_pretrained(path, local_files_only=True).eval()
        emb = m.visual_projection(m.vision_model(pixel_values=x).pooler_output)
    else:
        emb = CLIPVisionModel.from_pretrained(path, local_files_only=True).eval()(pixel_values=x).pooler_output
    return emb.view(B, T, -1)


@pytest.mark.parametrize("kind,width", [("full", PROJ), ("vision", 32), ("siglip", 32)])
def test_tower_builds_and_equals_direct_transformers(dirs, kind: str, width: int) -> None:
    """From a CLIPModel dir (vision half + visual_projection), a bare CLIPVisionModel dir (pooled output) and a
    SiglipModel dir (its pooling head): the clip feature before our head is the mean of the frame embeddings
    transformers computes, to 1e-5."""
    tower = VideoTower(_cfg(dirs[kind], frame_dim=width), D).eval()
    frames = _frames()
    with torch.no_grad():
        out = tower(frames)
        feats = tower.forward_features(frames)
        want = _direct(dirs[kind], frames).mean(1)
    assert out.shape == (2, D) and torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert feats.shape == (2, width)
    torch.testing.assert_close(feats, want, atol=1e-5, rtol=1e-5)


def test_transformer_pooling_and_gradients(dirs) -> None:
    tower = VideoTower(_cfg(dirs["full"], temporal="transformer"), D)
    out = tower(_frames())
    assert out.shape == (2, D) and torch.isfinite(out).all()
    out.sum().backward()
    assert tower.cnn.vision.embeddings.patch_embedding.weight.grad is not None


def test_processor_mean_std_are_used(dirs, tmp_path: Path) -> None:
    """Another mean/std in preprocessor_config.json gives other features (nothing hard-coded)."""
    other = tmp_path / "other"
    other.mkdir()
    for f in dirs["full"].iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    _processor(other, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    frames = _frames()
    with torch.no_grad():
        a = VideoTower(_cfg(dirs["full"]), D).eval().forward_features(frames)
        b = VideoTower(_cfg(other), D).eval().forward_features(frames)
        want = _direct(other, frames, [0.5] * 3, [0.5] * 3).mean(1)
    assert not torch.allclose(a, b, atol=1e-3)
    torch.testing.assert_close(b, want, atol=1e-5, rtol=1e-5)


def test_frames_of_another_size_are_resized_to_the_processors(dirs) -> None:
    tower = VideoTower(_cfg(dirs["full"]), D).eval()
    with torch.no_grad():
        out = tower.forward_features(_frames(size=48))
    assert out.shape == (2, PROJ) and torch.isfinite(out).all()


@pytest.mark.parametrize("kind,width", [("full", PROJ), ("siglip", 32)])
def test_dropped_tensor_fails_with_one_line(dirs, tmp_path: Path, kind: str, width: int) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in dirs[kind].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    state = load_file(str(broken / "model.safetensors"))
    dropped = "vision_model.encoder.layers.1.mlp.fc2.weight"
    del state[dropped]
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(PretrainedWeightsError) as e:
        VideoTower(_cfg(broken, frame_dim=width), D)
    msg = str(e.value)
    assert "\n" not in msg and "model.video.pretrained_path" in msg and "missing 1" in msg
    assert dropped.removeprefix("vision_model.") in msg  # SigLIP's vision model names its keys without the prefix


def test_full_dir_without_projection_when_asked(dirs) -> None:
    """use_projection: false leaves CLIP's visual_projection out: the frame embedding is the pooled output."""
    tower = VideoTower(_cfg(dirs["full"], use_projection=False, frame_dim=32), D).eval()
    assert tower.cnn.projection is None and tower.cnn.out_dim == 32


@pytest.mark.parametrize(
    "kw,named",
    [
        (dict(frame_diff=True), "frame_diff: false"),
        (dict(spatial_grid=2), "spatial_grid: 1"),
        (dict(frame_dim=256), f"frame_dim: {PROJ}"),
        (dict(image_size=112), "image_size: 32"),
    ],
)
def test_options_a_vit_cannot_honour_are_refused_by_name(dirs, kw: dict, named: str) -> None:
    with pytest.raises(ValueError) as e:
        VideoTower(_cfg(dirs["full"], **kw), D)
    assert named in str(e.value) and "\n" not in str(e.value)


def test_not_a_model_dir_and_missing_processor_fail_with_one_line(dirs, tmp_path: Path) -> None:
    with pytest.raises(PretrainedWeightsError, match=r"no config\.json"):
        VideoTower(_cfg(tmp_path), D)
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in dirs["vision"].iterdir():
        if f.name != "preprocessor_config.json":
            (bare / f.name).write_bytes(f.read_bytes())
    with pytest.raises(PretrainedWeightsError, match=r"no preprocessor_config\.json"):
        VideoTower(_cfg(bare, frame_dim=32), D)


@pytest.mark.parametrize("kind,width", [("full", PROJ), ("siglip", 32)])
def test_rebuilt_from_its_record_without_the_directory(dirs, kind: str, width: int) -> None:
    """What a checkpoint does: the recorded architecture + the saved weights give the same tower, no dir read."""
    tower = VideoTower(_cfg(dirs[kind], frame_dim=width), D).eval()
    again = VideoTower(_cfg(None, frame_dim=width, hf_arch=json.loads(json.dumps(tower.hf_arch))), D).eval()
    again.load_state_dict(tower.state_dict())
    frames = _frames()
    with torch.no_grad():
        torch.testing.assert_close(again(frames), tower(frames), atol=0, rtol=0)


def test_checkpoint_carries_the_trunk_and_loads_without_the_directory(dirs, tmp_path: Path) -> None:
    """save_model puts the hf trunk's weights in model.safetensors and its architecture in config.json: after the
    source directory is deleted, load_model rebuilds the same model (same video embeddings, bit for bit)."""
    import shutil

    from multimodal_rec.config import load_config
    from multimodal_rec.model.checkpoint import load_model, read_tensors, save_model
    from multimodal_rec.model.multimodal import create_model

    src = tmp_path / "clip"
    shutil.copytree(dirs["full"], src)
    video = dict(trunk="hf", pretrained_path=str(src), frame_diff=False, spatial_grid=1, frame_dim=PROJ, image_size=32)
    cfg = load_config("tiny", {f"model.video.{k}": v for k, v in video.items()})
    torch.manual_seed(0)
    model = create_model(cfg.model).eval()
    save_model(model, cfg, tmp_path / "run")
    shutil.rmtree(src)
    assert any(k.startswith("video.cnn.vision.") for k in read_tensors(tmp_path / "run" / "model.safetensors"))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["config"]["model"]["video"]
    assert saved["pretrained_path"] == str(src) and saved["hf_arch"]["image_mean"] == MEAN  # provenance + record
    loaded, _ = load_model(tmp_path / "run")
    frames = _frames()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_video(frames), model.encode_video(frames), atol=0, rtol=0)


def test_create_model_reports_a_refused_hf_trunk_as_one_line_user_error(dirs) -> None:
    from multimodal_rec.config import load_config
    from multimodal_rec.errors import UserError
    from multimodal_rec.model.multimodal import create_model

    for overrides, named in [
        ({"model.video.trunk": "hf"}, "needs model.video.pretrained_path"),
        ({"model.video.trunk": "hf", "model.video.pretrained_path": str(dirs["full"])}, "set model.video.frame_diff"),
    ]:
        with pytest.raises(UserError) as e:
            create_model(load_config("tiny", overrides).model)
        assert named in str(e.value) and "\n" not in str(e.value)


def test_trained_bundle_serves_and_encodes_after_the_directory_is_gone(dirs, tmp_path: Path) -> None:
    """One epoch with the hf trunk, `mmrec encode`'s bundle, the source directory deleted: the bundle loads,
    searches, and a clip added again embeds as it did at encode time (the trunk's weights travel in the bundle)."""
    import shutil

    import numpy as np
    import pandas as pd

    from multimodal_rec import Recommender
    from multimodal_rec.config import load_config
    from multimodal_rec.data.synth import make_world
    from multimodal_rec.encoding import encode_catalog
    from multimodal_rec.training.train import train

    world, src = tmp_path / "world", tmp_path / "clip"
    make_world(world, videos=16, users=6, seed=1, holdout=0.34)
    shutil.copytree(dirs["full"], src)
    video = dict(trunk="hf", pretrained_path=str(src), frame_diff=False, spatial_grid=1, frame_dim=PROJ, image_size=32)
    train(load_config("tiny", {f"model.video.{k}": v for k, v in video.items()}), world, tmp_path / "run")
    encode_catalog(tmp_path / "run", world / "catalog.csv", tmp_path / "bundle", batch_size=8, workers=0)
    shutil.rmtree(src)
    rec = Recommender.load(tmp_path / "bundle")
    assert len(rec.search("green square", k=3)) == 3
    again = pd.read_csv(world / "catalog.csv").head(1)
    first = again.video_id[0]
    again["video_id"], again["path"] = "again", str(world / again.path[0])
    assert rec.add_videos(again).added == ["again"]
    np.testing.assert_allclose(rec.embeddings[rec.row_of["again"]], rec.embeddings[rec.row_of[first]], atol=1e-5)
