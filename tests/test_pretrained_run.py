"""The bring-your-own-CLIP path end to end, on a small random CLIPModel directory of the real classes:
``mmrec init --from-pretrained`` -> ``mmrec encode`` -> search (the README's three commands), then fine-tuning
with ``mmrec train --from-pretrained --config clip``, saving and reloading without the directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from multimodal_rec.cli import main
from multimodal_rec.data.synth.clip_dir import IMAGE_MEAN, IMAGE_STD, make_clip_dir

QUERIES = ["a red circle moving left", "blue square", "left"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip_dir(tmp_path_factory.mktemp("pretrained") / "clip")


@pytest.fixture(scope="module")
def zero_shot_bundle(clip_dir: Path, world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zs")
    assert main(["init", "--from-pretrained", str(clip_dir), "--out", str(root / "run"), "-q"]) == 0
    encode = ["encode", "--model", str(root / "run"), "--catalog", str(world / "catalog.csv"), "--workers", "0"]
    # the video's frames alone, one segment per clip: what the direct computation below scores
    assert main([*encode, "--out", str(root / "bundle"), "--text-weight", "0", "--segment-seconds", "0", "-q"]) == 0
    return root / "bundle"


@torch.no_grad()
def _direct_scores(clip_dir: Path, world: Path, query: str, num_frames: int, size: int) -> dict[str, float]:
    """cos(text embedding, mean of the frame embeddings) straight from transformers' CLIPModel, per video."""
    from transformers import AutoTokenizer, CLIPModel

    from multimodal_rec.data.frames import read_frames

    model = CLIPModel.from_pretrained(clip_dir, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(clip_dir, local_files_only=True)
    enc = tok([query], padding=True, truncation=True, max_length=32, return_tensors="pt")
    t = model.text_projection(model.text_model(**enc).pooler_output)[0]
    t = t / t.norm()
    mean, std = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    out = {}
    cat = pd.read_csv(world / "catalog.csv")
    for vid, path in zip(cat["video_id"], cat["path"], strict=True):
        frames = torch.from_numpy(read_frames(world / path, num_frames, size)).permute(0, 3, 1, 2)  # [T, 3, S, S]
        pixels = (frames.float() / 255.0 - mean) / std
        v = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output).mean(0)
        out[str(vid)] = float(t @ (v / v.norm()))
    return out


def test_zero_shot_scores_are_clips_own(zero_shot_bundle: Path, clip_dir: Path, world: Path) -> None:
    """Zero-shot search scores equal text embedding . mean of frame embeddings computed by transformers (1e-5)."""
    from multimodal_rec import Recommender

    rec = Recommender.load(zero_shot_bundle)
    video = rec.cfg.model.video
    assert (video.num_frames, video.image_size, rec.cfg.model.embed_dim) == (8, 64, 32)
    for q in QUERIES:
        direct = _direct_scores(clip_dir, world, q, video.num_frames, video.image_size)
        hits = rec.search(q, k=len(rec), mode="vector")
        assert len(hits) == len(direct)
        got = np.array([h.score for h in hits])
        want = np.array([direct[h.video_id] for h in hits])
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        assert list(got) == sorted(got, reverse=True)


def test_zero_shot_refuses_to_recommend(zero_shot_bundle: Path, capsys) -> None:
    from multimodal_rec import Recommender, UserError

    rec = Recommender.load(zero_shot_bundle)
    with pytest.raises(UserError, match=r"zero-shot .* user tower is untrained"):
        rec.recommend([rec.video_ids[0]])
    assert main(["recommend", "--bundle", str(zero_shot_bundle), "--history", rec.video_ids[0], "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mmrec train --from-pretrained" in err[0]
    from fastapi.testclient import TestClient

    from multimodal_rec.serving import http

    with TestClient(http.create_app(rec)) as client:
        r = client.post("/recommend", json={"history": [rec.video_ids[0]], "k": 3})
        assert r.status_code == 400 and "user tower is untrained" in r.json()["error"]
        assert client.post("/search", json={"query": "a red circle", "k": 3}).status_code == 200


def test_init_refusals_are_one_line(tmp_path: Path, clip_dir: Path, capsys) -> None:
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "config.json").write_text('{"model_type": "bert"}')
    cases = [
        (tmp_path / "nothing", "no config.json there"),
        (tmp_path / "text", "holds a 'bert' model, not an image-text pair"),
    ]
    for src, why in cases:
        assert main(["init", "--from-pretrained", str(src), "--out", str(tmp_path / "run"), "-q"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and why in err[0], err
    assert main(["init", "--from-pretrained", str(clip_dir), "--out", str(tmp_path / "run"), "-q"]) == 0
    assert main(["init", "--from-pretrained", str(clip_dir), "--out", str(tmp_path / "run"), "-q"]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_fine_tune_save_reload_without_the_directory(clip_dir: Path, world: Path, tmp_path: Path) -> None:
    """One epoch of the clip recipe (frozen trunks: cached features), encode, search and recommend, save, and
    reload after the pretrained directory is gone: identical answers."""
    from multimodal_rec import Recommender

    src = shutil.copytree(clip_dir, tmp_path / "clip")
    small = ["--set", "train.batch_size=8", "--set", "train.rec_batch_size=8", "--set", "model.video.num_frames=4"]
    args = ["train", "--from-pretrained", str(src), "--config", "clip", "--data", str(world), "--epochs", "1"]
    assert main([*args, "--out", str(tmp_path / "run"), *small, "-q"]) == 0
    encode = ["encode", "--model", str(tmp_path / "run"), "--catalog", str(world / "catalog.csv"), "--workers", "0"]
    assert main([*encode, "--out", str(tmp_path / "bundle"), "-q"]) == 0
    rec = Recommender.load(tmp_path / "bundle")
    assert not rec.cfg.zero_shot and rec.cfg.model.video.trunk == "hf"
    before = [[(h.video_id, h.score) for h in rec.search(q, k=5)] for q in QUERIES]
    history = rec.video_ids[:3]
    rec_before = [(h.video_id, h.score) for h in rec.recommend(history, k=5)]
    rec.save(tmp_path / "saved")
    shutil.rmtree(src)
    for path in (tmp_path / "bundle", tmp_path / "saved"):
        again = Recommender.load(path)
        assert [[(h.video_id, h.score) for h in again.search(q, k=5)] for q in QUERIES] == before
        assert [(h.video_id, h.score) for h in again.recommend(history, k=5)] == rec_before
