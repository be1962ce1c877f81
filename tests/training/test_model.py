"""The model package: one checkpoint reader/writer whose files carry a format version (and still read the files
written before), and one text-feature extractor shared by the video model and the text-item model."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_trainer import tiny_cfg, tiny_problem, tiny_train

from encoders import TextTowerConfig
from multimodal_rec.errors import UserError
from multimodal_rec.evaluation.ml100k.textrec import NextItemTask, TextItemRecModel, save_textrec, train_textrec
from multimodal_rec.model.checkpoint import (
    CHECKPOINT_FORMAT,
    load_model,
    load_train_state,
    model_fingerprint,
    read_checkpoint_config,
    save_model,
    save_train_state,
)
from multimodal_rec.model.multimodal import create_model
from multimodal_rec.model.text_features import frozen_trunk_features, text_features

FIXTURES = Path(__file__).parent / "fixtures"
TINY_TEXT = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}


def file_format(path: Path) -> str | None:
    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("format")


@pytest.fixture(scope="module")
def small_model(tiny_cfg):
    """The tiny preset with its text trunk frozen (features cacheable)."""
    cfg = copy.deepcopy(tiny_cfg)
    cfg.model.text.trainable_layers = 0
    torch.manual_seed(0)
    return create_model(cfg.model).eval(), cfg


# --- checkpoints ------------------------------------------------------------------------------------------
def test_every_checkpoint_file_carries_the_format_version(small_model, tmp_path: Path) -> None:
    model, cfg = small_model
    save_model(model, cfg, tmp_path / "video")
    _, feats = tiny_problem()
    textrec = TextItemRecModel(tiny_cfg(), feats, np.ones(len(feats), bool), np.ones(len(feats)))
    save_textrec(textrec, tmp_path / "text", {"epoch": 1})
    opt = torch.optim.AdamW(textrec.parameters())
    textrec.loss.logit_scale.grad = torch.ones(())
    opt.step()  # some optimizer state to save
    save_train_state(tmp_path / "text", opt, {"epoch": 1, "micro": 0, "step": 1})
    pairs = [("video", "model.safetensors", "config.json"), ("text", "model.safetensors", "textrec.json")]
    pairs.append(("text", "train_state.safetensors", "train_state.json"))
    for sub, tensors, meta in pairs:
        assert file_format(tmp_path / sub / tensors) == str(CHECKPOINT_FORMAT), tensors
        assert json.loads((tmp_path / sub / meta).read_text())["format"] == CHECKPOINT_FORMAT, meta


def test_a_checkpoint_of_another_format_is_refused(small_model, tmp_path: Path) -> None:
    model, cfg = small_model
    save_model(model, cfg, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**meta, "format": 2}))
    with pytest.raises(UserError, match="unsupported checkpoint format 2"):
        read_checkpoint_config(tmp_path / "m")
    save_model(model, cfg, tmp_path / "m")
    w = tmp_path / "m" / "model.safetensors"
    save_file(load_file(str(w)), str(w), metadata={"format": "2"})
    with pytest.raises(UserError, match="unsupported checkpoint format 2"):
        load_model(tmp_path / "m")


def _old_save_model(model, cfg, out: Path) -> None:
    """The model writer as it was before the checkpoint writers became one (pinned recipe)."""
    out.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    if model.text.trunk_frozen and model.cfg.text.random_init is None:
        state = {k: v for k, v in state.items() if not k.startswith("text.trunk.")}
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "1"})
    (out / "config.json").write_text(json.dumps({"format": 1, "config": cfg.to_dict(), "epoch": 1}, indent=2))


def test_model_files_are_written_byte_for_byte_as_before(small_model, tmp_path: Path) -> None:
    """Runs and bundles made before keep loading, and a re-saved model keeps its fingerprint."""
    model, cfg = small_model
    _old_save_model(model, cfg, tmp_path / "old")
    save_model(model, cfg, tmp_path / "new", extra={"epoch": 1})
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "old" / name).read_bytes() == (tmp_path / "new" / name).read_bytes(), name
    assert model_fingerprint(tmp_path / "old") == model_fingerprint(tmp_path / "new")
    loaded, loaded_cfg = load_model(tmp_path / "old")
    assert loaded_cfg == cfg
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_a_run_written_before_resumes_to_the_same_weights(tmp_path: Path) -> None:
    """``tests/training/fixtures/textrec_run_v1`` was written by the code before this change (no format in its training
    state or text-item files) and stopped at step 3 of 2 epochs; ``…final.safetensors`` is where that code's
    resume ended. Today's code reads it and ends where it did (bit-identical on the same CPU)."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "textrec_run_v1", run)
    assert "format" not in json.loads((run / "train_state.json").read_text())
    assert file_format(run / "train_state.safetensors") is None
    seqs, feats = tiny_problem()
    train_textrec(seqs, feats, tiny_cfg(), tiny_train(epochs=2, log_every=100), run, resume=True)
    want, got = load_file(str(FIXTURES / "textrec_run_v1.final.safetensors")), load_file(str(run / "model.safetensors"))
    assert want.keys() == got.keys()
    # Bit-identical on the CPU that wrote the fixture. Another CPU's kernels (AVX2 against AVX-512) round differently:
    # weights within 5e-6 on an AVX2-only EPYC, but the attention scorer's last bias (softmax ignores it, so its
    # gradient is rounding noise that Adam scales up to learning-rate steps) by 9e-4. A fresh start instead of the
    # resume moves weights by far more (tested by planting it).
    for k in want:
        tol = 3e-3 if k == "user.attn.2.bias" else 1e-5
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=tol, msg=k)
    model = TextItemRecModel(tiny_cfg(), feats, np.ones(len(feats), bool), np.ones(len(feats)))
    task = NextItemTask(model, seqs, tiny_train())
    task.load_weights(FIXTURES / "textrec_run_v1")  # the old text-item files load too
    opt = torch.optim.AdamW(task.param_groups(tiny_train()))
    assert load_train_state(FIXTURES / "textrec_run_v1", opt)["step"] == 3


# --- text features ----------------------------------------------------------------------------------------
@torch.no_grad()
def _old_textrec_features(texts: list[str], cfg: TextTowerConfig, batch_size: int = 128) -> np.ndarray:
    """``textrec.text_features`` as it was before the two extractors became one (pinned recipe)."""
    from encoders.text import TextTower, load_tokenizer

    tower, tok = TextTower(cfg, 8).eval(), load_tokenizer(cfg)
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tok(
            texts[i : i + batch_size], padding=True, truncation=True, max_length=cfg.max_length, return_tensors="pt"
        )
        out.append(tower.forward_features(enc["input_ids"], enc["attention_mask"]).float().numpy())
    return np.concatenate(out)


TEXTS = ["a red ball", "a blue box moving left", "x", "a red ball", "green dots rising " * 8]


def test_text_item_features_are_the_same_numbers_as_before() -> None:
    cfg = TextTowerConfig(random_init=TINY_TEXT, max_length=12)
    torch.manual_seed(0)
    old = _old_textrec_features(TEXTS, cfg, batch_size=2)
    torch.manual_seed(0)
    new = text_features(TEXTS, cfg, batch_size=2)
    assert new.dtype == np.float32 and np.array_equal(old, new)
    assert text_features([], cfg).shape == (0, 16)


def test_the_video_model_reads_the_same_features(small_model) -> None:
    """Cached or not, the model's frozen-trunk features are the shared extractor's, on the model's tower."""
    model, _ = small_model
    want = frozen_trunk_features(model.text, model.tokenizer, TEXTS, 256, model.device)
    model.clear_text_cache()
    for cache in (False, True):
        model.cache_text_features = cache
        assert torch.equal(model.text_features(TEXTS), want), cache
    model.clear_text_cache()
    model.train()
    assert torch.equal(model.text_features(TEXTS), want)  # a frozen trunk runs as at inference (no dropout)
    assert model.text.trunk.training  # and is left in the mode it was in
    model.eval()
