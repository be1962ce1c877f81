"""Pretrained weights load strictly: a file that does not fit its trunk fails with one line naming what did not match.

Tiny random models saved to temporary files (no network): a torchvision resnet10 state dict for the video trunk,
a small BertModel directory for the text trunk.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from encoders import TextTower, TextTowerConfig
from encoders.text import default_model_path
from encoders.video import _resnet10, build_cnn
from encoders.weights import PretrainedWeightsError


# --- the video trunk ------------------------------------------------------------------------------------------
@pytest.fixture
def resnet_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return _resnet10().state_dict()


def _save(state: dict[str, torch.Tensor], path: Path) -> str:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return str(path)


def _refused(path: str, **kw) -> str:
    with pytest.raises(PretrainedWeightsError) as e:
        build_cnn("resnet10", path, **kw)
    msg = str(e.value)
    assert "\n" not in msg and "model.video.weights_path" in msg
    return msg


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_matching_file_loads_identical_trunk_weights(resnet_state, tmp_path: Path, suffix: str) -> None:
    body, _ = build_cnn("resnet10", _save(resnet_state, tmp_path / f"w{suffix}"))
    loaded = body.state_dict()
    trunk = {k: v for k, v in resnet_state.items() if not k.startswith("fc.")}
    assert len(loaded) == len(trunk)
    for (k, v), (k2, v2) in zip(trunk.items(), loaded.items(), strict=True):
        assert k.split(".", 1)[1] == k2.split(".", 1)[1] and torch.equal(v, v2), k  # children renumbered: 0., 1.


def test_file_without_classifier_head_loads_by_default(resnet_state, tmp_path: Path) -> None:
    headless = {k: v for k, v in resnet_state.items() if not k.startswith("fc.")}
    body, _ = build_cnn("resnet10", _save(headless, tmp_path / "w.pth"))
    assert torch.equal(body.state_dict()["0.weight"], resnet_state["conv1.weight"])
    # a head of another size (a fine-tuned 10-class classifier) is the same harmless remainder
    other_head = {**resnet_state, "fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}
    build_cnn("resnet10", _save(other_head, tmp_path / "w10.pth"))
    # without the ignore list the missing head is an error
    assert "fc.bias" in _refused(str(tmp_path / "w.pth"), weights_ignore=[])


def test_missing_key_is_named(resnet_state, tmp_path: Path) -> None:
    del resnet_state["layer2.0.conv1.weight"]
    msg = _refused(_save(resnet_state, tmp_path / "w.pth"))
    assert "missing 1 (layer2.0.conv1.weight)" in msg and "unexpected" not in msg


def test_renamed_key_is_named_both_ways(resnet_state, tmp_path: Path) -> None:
    resnet_state["layer2.0.conv_one.weight"] = resnet_state.pop("layer2.0.conv1.weight")
    msg = _refused(_save(resnet_state, tmp_path / "w.safetensors"))
    assert "missing 1 (layer2.0.conv1.weight)" in msg and "unexpected 1 (layer2.0.conv_one.weight)" in msg


def test_extra_key_is_named_and_can_be_allowed(resnet_state, tmp_path: Path) -> None:
    path = _save({**resnet_state, "aux.weight": torch.zeros(3)}, tmp_path / "w.pth")
    assert "unexpected 1 (aux.weight)" in _refused(path)
    build_cnn("resnet10", path, weights_ignore=["fc.", "aux."])  # a declared harmless remainder


def test_wrong_shape_is_named(resnet_state, tmp_path: Path) -> None:
    resnet_state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    msg = _refused(_save(resnet_state, tmp_path / "w.pth"))
    assert "conv1.weight [64, 3, 3, 3] in the file vs [64, 3, 7, 7] in the model" in msg


def test_many_mismatches_are_counted(tmp_path: Path) -> None:
    import torchvision

    other = torchvision.models.get_model("mobilenet_v3_small", weights=None).state_dict()
    msg = _refused(_save(other, tmp_path / "mobilenet.pth"))
    assert "e.g." in msg and ", ...)" in msg
    n_missing = int(msg.split("missing ")[1].split(" ")[0])
    weights = [k for k in _resnet10().state_dict() if not k.startswith("fc.") and "num_batches" not in k]
    assert n_missing == len(weights)  # num_batches_tracked is a counter torch fills in for old files, not a weight


def test_unreadable_or_absent_file_is_one_line(tmp_path: Path) -> None:
    assert "no such file" in _refused(str(tmp_path / "absent.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert "cannot be read" in _refused(str(tmp_path / "junk.pth"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    assert "cannot be read" in _refused(str(tmp_path / "junk.safetensors"))
    (tmp_path / "empty.pth").write_bytes(b"")
    assert "cannot be read" in _refused(str(tmp_path / "empty.pth"))
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "epoch": 3}, tmp_path / "ckpt.pth")
    assert "not a flat state dict" in _refused(str(tmp_path / "ckpt.pth"))


def test_create_model_and_cli_report_a_bad_file_on_one_line(tmp_path: Path, capsys) -> None:
    from multimodal_rec.cli import main
    from multimodal_rec.config import load_config
    from multimodal_rec.data.synth import make_world
    from multimodal_rec.errors import UserError
    from multimodal_rec.model.multimodal import create_model

    bad = _save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "bad.pth")
    cfg = load_config("tiny", {"model.video.weights_path": bad})
    with pytest.raises(UserError, match=r"does not fit the model: missing \d+ \(e.g. bn1.bias"):
        create_model(cfg.model)
    make_world(tmp_path / "world", videos=6, users=2, seed=1)
    argv = ["train", "--config", "tiny", "--data", str(tmp_path / "world"), "--out", str(tmp_path / "run"), "-q"]
    assert main([*argv, "--set", f"model.video.weights_path={bad}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not fit the model" in err and "bn1.bias" in err


# --- the text trunk -------------------------------------------------------------------------------------------
def _tiny_bert_dir(path: Path, pooler: bool = True) -> Path:
    """A small random BertModel saved with ``save_pretrained``, plus the packaged MiniLM tokenizer files."""
    from transformers import AutoConfig, BertConfig, BertModel

    torch.manual_seed(0)
    vocab = AutoConfig.from_pretrained(default_model_path(), local_files_only=True).vocab_size
    cfg = BertConfig(
        vocab_size=vocab,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(cfg, add_pooling_layer=pooler).save_pretrained(path)
    src = Path(default_model_path())
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).is_file():
            shutil.copy(src / name, path / name)
    return path


def _rewrite_weights(path: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(path / "model.safetensors"))
    edit(state)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})


def _text_refused(path: Path) -> str:
    with pytest.raises(PretrainedWeightsError) as e:
        TextTower(TextTowerConfig(model_path=str(path), proj_hidden=0), 8)
    msg = str(e.value)
    assert "\n" not in msg and f"model.text.model_path {path}" in msg
    return msg


def test_text_model_dir_loads_its_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    path = _tiny_bert_dir(tmp_path / "bert")
    tower = TextTower(TextTowerConfig(model_path=str(path), proj_hidden=0), 8)
    saved = load_file(str(path / "model.safetensors"))
    state = tower.trunk.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    assert tower.feat_dim == 16


def test_text_model_without_pooler_loads_quietly(tmp_path: Path, capfd) -> None:
    path = _tiny_bert_dir(tmp_path / "bert", pooler=False)
    capfd.readouterr()
    TextTower(TextTowerConfig(model_path=str(path), proj_hidden=0), 8)
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err and "MISSING" not in err and "not sharded" not in err  # an allowed remainder


def test_text_model_with_a_dropped_tensor_is_refused(tmp_path: Path) -> None:
    path = _tiny_bert_dir(tmp_path / "bert")
    _rewrite_weights(path, lambda s: s.pop("encoder.layer.0.attention.self.query.weight"))
    assert "missing 1 (encoder.layer.0.attention.self.query.weight)" in _text_refused(path)


def test_text_model_with_extra_or_misshapen_tensor_is_refused(tmp_path: Path) -> None:
    path = _tiny_bert_dir(tmp_path / "bert")
    _rewrite_weights(path, lambda s: s.update({"adapter.weight": torch.zeros(2)}))
    assert "unexpected 1 (adapter.weight)" in _text_refused(path)
    path = _tiny_bert_dir(tmp_path / "bert2")
    _rewrite_weights(path, lambda s: s.update({"encoder.layer.0.output.dense.bias": torch.zeros(4)}))
    assert "encoder.layer.0.output.dense.bias [4] in the file vs [16] in the model" in _text_refused(path)


def test_text_model_dir_without_weights_is_one_line(tmp_path: Path) -> None:
    path = _tiny_bert_dir(tmp_path / "bert")
    (path / "model.safetensors").unlink()
    assert "cannot be loaded" in _text_refused(path)


def test_packaged_text_model_still_loads() -> None:
    from transformers import AutoModel

    tower = TextTower(TextTowerConfig(), 8)
    ref = AutoModel.from_pretrained(default_model_path(), local_files_only=True)
    assert tower.trunk.state_dict().keys() == ref.state_dict().keys()
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in tower.trunk.state_dict().items())
