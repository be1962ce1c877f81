"""The text tower reads other local text models: sentence-transformers directories (their pooling), CLIP text models.

Tiny random models saved to temporary directories (no network, no download). The CLIP tokenizer is a real
``CLIPTokenizer`` built from a small byte-level vocab.json/merges.txt written here: no CLIP tokenizer is on disk,
and a real one exercises what a CLIP directory ships (``<|endoftext|>`` as EOS and padding, read by
``AutoTokenizer``), which the packaged WordPiece tokenizer would not.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from encoders import TextTower, TextTowerConfig
from encoders.hf_text import TextModelConfigError
from encoders.text import default_model_path, load_tokenizer
from multimodal_rec.data.synth.clip_dir import write_clip_tokenizer
from multimodal_rec.errors import UserError
from multimodal_rec.model.text_features import text_features, tokenize

TEXTS = ["a red car drives past", "crimson", "un chat noir sur le toit", ""]
ST_MODULES = [
    {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]


def _features(cfg: TextTowerConfig) -> torch.Tensor:
    tower = TextTower(cfg, 8).eval()
    with torch.no_grad():
        return tower.forward_features(**tokenize(load_tokenizer(cfg), TEXTS, cfg.max_length, torch.device("cpu")))


# --- sentence-transformers layouts ----------------------------------------------------------------------------
def _st_dir(path: Path, pooling: dict[str, bool], subfolder: str = "0_Transformer") -> Path:
    """A tiny random BertModel in a sentence-transformers layout (transformer in ``subfolder``; "" = the root)."""
    from transformers import AutoConfig, BertConfig, BertModel

    torch.manual_seed(0)
    vocab = AutoConfig.from_pretrained(default_model_path(), local_files_only=True).vocab_size
    cfg = BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    model_dir = path / subfolder
    BertModel(cfg, add_pooling_layer=False).save_pretrained(model_dir)
    src = Path(default_model_path())
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).is_file():
            shutil.copy(src / name, model_dir / name)
    modules = [{**m, "path": subfolder} if m["idx"] == 0 else m for m in ST_MODULES]
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir()
    modes = {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False}
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 16, **modes, **pooling}))
    return path


def _direct_hidden(model_dir: Path, max_length: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    enc = tok(TEXTS, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(model_dir, local_files_only=True)(**enc).last_hidden_state
    return hidden, enc["attention_mask"]


def test_st_cls_pooling_is_the_first_token(tmp_path: Path) -> None:
    path = _st_dir(tmp_path / "st", {"pooling_mode_cls_token": True})
    feats = _features(TextTowerConfig(model_path=str(path), proj_hidden=0))
    hidden, _ = _direct_hidden(path / "0_Transformer")
    torch.testing.assert_close(feats, hidden[:, 0], atol=1e-6, rtol=0)


def test_st_max_pooling_is_the_masked_max(tmp_path: Path) -> None:
    path = _st_dir(tmp_path / "st", {"pooling_mode_max_tokens": True}, subfolder="")
    feats = _features(TextTowerConfig(model_path=str(path), proj_hidden=0))
    hidden, mask = _direct_hidden(path)
    expected = torch.stack([h[m.bool()].max(0).values for h, m in zip(hidden, mask, strict=True)])
    torch.testing.assert_close(feats, expected, atol=1e-6, rtol=0)
    assert not torch.allclose(feats, hidden.max(1).values)  # padding positions are excluded (the short texts)


def test_st_mean_pooling_and_the_cache_path(tmp_path: Path) -> None:
    path = _st_dir(tmp_path / "st", {"pooling_mode_mean_tokens": True})
    cfg = TextTowerConfig(model_path=str(path), proj_hidden=0)
    hidden, mask = _direct_hidden(path / "0_Transformer")
    m = mask.unsqueeze(-1).float()
    expected = (hidden * m).sum(1) / m.sum(1)
    torch.testing.assert_close(_features(cfg), expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(text_features(TEXTS, cfg), expected.numpy(), atol=1e-6)  # the frozen-feature path
    with pytest.raises(TextModelConfigError, match="use_projection applies to CLIP text models"):
        TextTower(TextTowerConfig(model_path=str(path), use_projection=True), 8)


@pytest.mark.parametrize(
    "pooling, why",
    [
        ({}, "0 modes on (none)"),
        ({"pooling_mode_cls_token": True, "pooling_mode_max_tokens": True}, "2 modes on"),
        ({"pooling_mode_mean_sqrt_len_tokens": True}, "unsupported pooling_mode_mean_sqrt_len_tokens"),
    ],
)
def test_bad_pooling_config_is_one_line(tmp_path: Path, pooling: dict[str, bool], why: str) -> None:
    path = _st_dir(tmp_path / "st", pooling)
    with pytest.raises(TextModelConfigError) as e:
        TextTower(TextTowerConfig(model_path=str(path)), 8)
    msg = str(e.value)
    assert "\n" not in msg and "1_Pooling/config.json" in msg and why in msg and str(path) in msg


def test_unreadable_pooling_config_is_a_one_line_user_error(tmp_path: Path) -> None:
    from multimodal_rec.config import ModelConfig
    from multimodal_rec.model.multimodal import create_model

    path = _st_dir(tmp_path / "st", {"pooling_mode_cls_token": True})
    (path / "1_Pooling" / "config.json").write_text("{not json")
    with pytest.raises(UserError) as e:
        create_model(ModelConfig(text=TextTowerConfig(model_path=str(path))))
    assert "\n" not in str(e.value) and "cannot read config.json" in str(e.value)


def test_packaged_minilm_features_are_unchanged() -> None:
    """The default tower: masked mean of MiniLM's last hidden states, bit for bit as before."""
    feats = _features(TextTowerConfig())
    hidden, mask = _direct_hidden(Path(default_model_path()))
    m = mask.unsqueeze(-1).to(hidden.dtype)
    assert torch.equal(feats, (hidden * m).sum(1) / m.sum(1).clamp(min=1.0))


# --- CLIP -----------------------------------------------------------------------------------------------------
def _clip_text_kwargs(vocab: int) -> dict:
    return dict(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=40,
        projection_dim=24,
        bos_token_id=vocab - 2,
        eos_token_id=vocab - 1,
        pad_token_id=vocab - 1,
    )


def _clip_dir(path: Path, kind: str) -> Path:
    """A tiny random CLIPModel / CLIPTextModelWithProjection / CLIPTextModel directory with its tokenizer."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    text = _clip_text_kwargs(write_clip_tokenizer(path))
    if kind == "clip":
        vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, image_size=32)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config={**vision, "patch_size": 16}, projection_dim=24))
    else:
        model = {"with_projection": CLIPTextModelWithProjection, "text": CLIPTextModel}[kind](CLIPTextConfig(**text))
    model.save_pretrained(path)
    return path


def _direct_clip(path: Path, project: bool) -> torch.Tensor:
    from transformers import AutoTokenizer, CLIPModel, CLIPTextModel, CLIPTextModelWithProjection

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    enc = tok(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        if json.loads((path / "config.json").read_text())["model_type"] == "clip":
            full = CLIPModel.from_pretrained(path, local_files_only=True)
            pooled = full.text_model(**enc).pooler_output
            return full.text_projection(pooled) if project else pooled
        if project:
            return CLIPTextModelWithProjection.from_pretrained(path, local_files_only=True)(**enc).text_embeds
        return CLIPTextModel.from_pretrained(path, local_files_only=True)(**enc).pooler_output


@pytest.mark.parametrize("kind", ["clip", "with_projection"])
def test_clip_features_are_the_projected_eos_state(tmp_path: Path, kind: str) -> None:
    path = _clip_dir(tmp_path / kind, kind)
    cfg = TextTowerConfig(model_path=str(path), proj_hidden=0)
    tower = TextTower(cfg, 8)
    assert tower.feat_dim == 24 and tower.trunk_frozen
    assert not any(k.startswith(("vision_model.", "visual_projection.")) for k in tower.trunk.state_dict())
    ids = tokenize(load_tokenizer(cfg), TEXTS, cfg.max_length, torch.device("cpu"))["input_ids"]
    assert (ids == tower.trunk.config.eos_token_id).any(1).all()  # every row has the end-of-text token CLIP pools
    torch.testing.assert_close(_features(cfg), _direct_clip(path, project=True), atol=1e-5, rtol=0)


def test_clip_without_projection(tmp_path: Path) -> None:
    full = _clip_dir(tmp_path / "clip", "clip")
    cfg = TextTowerConfig(model_path=str(full), proj_hidden=0, use_projection=False)
    assert TextTower(cfg, 8).feat_dim == 32
    torch.testing.assert_close(_features(cfg), _direct_clip(full, project=False), atol=1e-5, rtol=0)
    text = _clip_dir(tmp_path / "text", "text")  # a CLIPTextModel: no projection, so none by default
    cfg = TextTowerConfig(model_path=str(text), proj_hidden=0)
    assert TextTower(cfg, 8).feat_dim == 32
    torch.testing.assert_close(_features(cfg), _direct_clip(text, project=False), atol=1e-5, rtol=0)
    with pytest.raises(TextModelConfigError, match=r"has no text_projection .*use_projection: false"):
        TextTower(TextTowerConfig(model_path=str(text), use_projection=True), 8)


def test_clip_loading_stays_strict(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from encoders.weights import PretrainedWeightsError

    path = _clip_dir(tmp_path / "clip", "clip")
    state = load_file(str(path / "model.safetensors"))
    state.pop("text_model.final_layer_norm.weight")
    state["vision_model.extra"] = torch.zeros(2)  # the vision half stays out of the check
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(PretrainedWeightsError) as e:
        TextTower(TextTowerConfig(model_path=str(path)), 8)
    msg = str(e.value)
    assert "\n" not in msg and "missing 1 (" in msg and "final_layer_norm.weight" in msg and "unexpected" not in msg


def test_clip_trainable_layers_are_its_encoder_layers(tmp_path: Path) -> None:
    path = _clip_dir(tmp_path / "clip", "clip")
    tower = TextTower(TextTowerConfig(model_path=str(path), trainable_layers=1), 8)
    trained = {n for n, p in tower.trunk.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith("text_model.encoder.layers.1.") for n in trained)
    assert not tower.trunk_frozen
    with pytest.raises(ValueError, match="trainable_layers 3: the text trunk has 2 layers"):
        TextTower(TextTowerConfig(model_path=str(path), trainable_layers=3), 8)


def test_max_length_beyond_the_models_positions_is_refused(tmp_path: Path) -> None:
    path = _clip_dir(tmp_path / "clip", "clip")  # 40 positions
    TextTower(TextTowerConfig(model_path=str(path), max_length=40), 8)
    with pytest.raises(ValueError, match="max_length 41 exceeds the text model's 40 positions"):
        TextTower(TextTowerConfig(model_path=str(path), max_length=41), 8)


def test_clip_model_in_the_combined_model(tmp_path: Path) -> None:
    """create_model with a CLIP text half: the user tower gets its width, frozen features are cached per string."""
    from multimodal_rec.config import ModelConfig
    from multimodal_rec.model.multimodal import create_model

    path = _clip_dir(tmp_path / "clip", "clip")
    model = create_model(ModelConfig(text=TextTowerConfig(model_path=str(path), proj_hidden=0))).eval()
    feats = model.text_features(TEXTS)
    assert feats.shape == (len(TEXTS), 24) and model.text.trunk_frozen
    torch.testing.assert_close(feats, _direct_clip(path, project=True), atol=1e-5, rtol=0)
    items, _ = model.history_batch([TEXTS[:2], TEXTS[2:]])
    assert items.shape[-1] == 24


@pytest.mark.parametrize("trainable", [0, -1])
def test_clip_text_tower_survives_save_and_load(tmp_path: Path, trainable: int) -> None:
    """Frozen or fine-tuned, a text model read from a directory is saved with the model (weights, architecture,
    tokenizer): the checkpoint loads and answers the same after the directory is gone."""
    from multimodal_rec.config import ModelConfig, RunConfig
    from multimodal_rec.model.checkpoint import load_model, save_model, trunk_from_source
    from multimodal_rec.model.multimodal import create_model

    path = _clip_dir(tmp_path / "clip", "clip")
    cfg = RunConfig(model=ModelConfig(text=TextTowerConfig(model_path=str(path), trainable_layers=trainable)))
    model = create_model(cfg.model).eval()
    if trainable:
        with torch.no_grad():
            model.text.trunk.text_projection.weight.add_(1.0)  # "fine-tuned": differs from the directory's weights
    assert not trunk_from_source(model)  # only the packaged model is rebuilt from its source
    save_model(model, cfg, tmp_path / "run")
    shutil.rmtree(path)
    loaded, loaded_cfg = load_model(tmp_path / "run")
    assert loaded_cfg.model.text.hf_arch["class"] == "CLIPTextModelWithProjection"
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(TEXTS), model.encode_text(TEXTS))
    broken = tmp_path / "run"
    shutil.rmtree(broken / "tokenizer")
    with pytest.raises(UserError, match="its text model's tokenizer/ is missing"):
        load_model(broken)


@pytest.mark.parametrize(
    "modules, why",
    [
        ({"path": "0_Transformer"}, "modules.json is not a list of modules"),
        ([{"type": "sentence_transformers.models.Transformer", "path": "../elsewhere"}], "points outside"),
    ],
)
def test_bad_modules_json_is_one_line(tmp_path: Path, modules: object, why: str) -> None:
    path = _st_dir(tmp_path / "st", {"pooling_mode_cls_token": True})
    (path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(TextModelConfigError, match=why):
        TextTower(TextTowerConfig(model_path=str(path)), 8)


def test_clip_loads_quietly_and_refuses_random_init(tmp_path: Path, capfd) -> None:
    path = _clip_dir(tmp_path / "clip", "clip")
    capfd.readouterr()
    TextTower(TextTowerConfig(model_path=str(path)), 8)
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err and "UNEXPECTED" not in err  # the vision half is left out on purpose
    with pytest.raises(TextModelConfigError, match="random_init builds a BERT trunk"):
        TextTower(TextTowerConfig(model_path=str(path), random_init={"hidden_size": 16}), 8)
