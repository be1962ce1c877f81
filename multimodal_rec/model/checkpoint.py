"""Checkpoints: ``model.safetensors`` (no pickle) + ``config.json`` (format version and the full run config).

A checkpoint carries the config that built it, so loading rebuilds the model with :func:`create_model` and loads the
weights strictly. A frozen *pretrained* text trunk is not saved: it is rebuilt from its source package.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from multimodal_rec.config import RunConfig, config_from_dict
from multimodal_rec.errors import UserError
from multimodal_rec.model.multimodal import MultimodalModel, create_model

LOG = logging.getLogger(__name__)
CHECKPOINT_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def _weights_to_save(model: MultimodalModel) -> dict[str, torch.Tensor]:
    """State dict without a frozen *pretrained* text trunk: it is rebuilt from its source on load."""
    state = model.state_dict()
    if model.text.trunk_frozen and model.cfg.text.random_init is None:
        state = {k: v for k, v in state.items() if not k.startswith("text.trunk.")}
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_model(
    model: MultimodalModel, cfg: RunConfig, out_dir: str | Path, extra: dict[str, Any] | None = None
) -> None:
    """``model.safetensors`` + ``config.json`` (format version, full run config) into ``out_dir``."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{WEIGHTS_FILE}.tmp"
    save_file(_weights_to_save(model), str(tmp), metadata={"format": str(CHECKPOINT_FORMAT)})
    tmp.replace(out_dir / WEIGHTS_FILE)
    meta = {"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), **(extra or {})}
    tmp_cfg = out_dir / f".{CONFIG_FILE}.tmp"
    tmp_cfg.write_text(json.dumps(meta, indent=2))
    tmp_cfg.replace(out_dir / CONFIG_FILE)


def read_checkpoint_config(model_dir: str | Path) -> RunConfig:
    """The run config a checkpoint carries (``config.json``), checked for its format version."""
    model_dir = Path(model_dir)
    cfg_path, w_path = model_dir / CONFIG_FILE, model_dir / WEIGHTS_FILE
    if not cfg_path.is_file() or not w_path.is_file():
        raise UserError(f"{model_dir} is not a trained model: expected {CONFIG_FILE} and {WEIGHTS_FILE} in it")
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg_path} is not valid JSON: {e}") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise UserError(
            f"{cfg_path}: unsupported checkpoint format {meta.get('format')!r} (expected {CHECKPOINT_FORMAT})"
        )
    return config_from_dict(meta["config"])


def load_weights(model: MultimodalModel, model_dir: str | Path) -> None:
    """Load ``model.safetensors`` into a model built from the same config (a frozen pretrained trunk is not saved)."""
    from safetensors.torch import load_file

    w_path = Path(model_dir) / WEIGHTS_FILE
    missing, unexpected = model.load_state_dict(load_file(str(w_path), device=str(model.device)), strict=False)
    missing = [k for k in missing if not (k.startswith("text.trunk.") and model.text.trunk_frozen)]
    if missing or unexpected:
        raise UserError(f"{w_path} does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}")


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> tuple[MultimodalModel, RunConfig]:
    """Rebuild a model from the config it carries, then load its weights (safetensors: no pickle)."""
    cfg = read_checkpoint_config(model_dir)
    model = create_model(cfg.model)
    load_weights(model, model_dir)
    return model.to(device).eval(), cfg


def sha256_file(path: Path) -> str:
    """Hex sha256 of a whole file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 over the weights and config: the embeddings of a video depend on nothing else."""
    model_dir = Path(model_dir)
    h = hashlib.sha256()
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        h.update(sha256_file(model_dir / name).encode())
    return h.hexdigest()
