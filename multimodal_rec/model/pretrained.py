"""Runs from a local pretrained image-text model (a CLIP directory): the config that takes both towers' trunks
from it, and the zero-shot run ``mmrec init --from-pretrained`` writes (no training).

Zero-shot, the towers are the model itself: per-frame image embeddings (its vision half through its
``visual_projection``) mean-pooled over time, text embeddings (its text half through its ``text_projection``),
identity heads, cosine similarity. The user tower has nothing to start from: a zero-shot run records
``zero_shot`` and recommending from it is refused until ``mmrec train`` trains one.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from encoders.hf_vision import read_processor
from encoders.weights import PretrainedWeightsError
from multimodal_rec.config import RunConfig, load_config
from multimodal_rec.errors import UserError
from multimodal_rec.model.checkpoint import has_train_state, save_model
from multimodal_rec.model.multimodal import create_model

IMAGE_TEXT_TYPES = ("clip",)  # model_type of a directory holding both halves the towers can read


def pretrained_config(cfg: RunConfig, path: str | Path) -> RunConfig:
    """``cfg`` with both trunks from the image-text model directory ``path`` and everything that follows from it:
    ``embed_dim`` = its projection width, identity linear heads, its processor's frame size, its text length limit.
    The rest (temporal pooling, trainable layers, learning rates, the user tower) stays as ``cfg`` says."""
    path = str(Path(path).resolve())
    source = f"--from-pretrained {path}"
    config = _read_config(path, source)
    try:
        side = read_processor(path, source)["image_size"]
    except PretrainedWeightsError as e:
        raise UserError(str(e)) from None
    text_cfg = config.get("text_config") or {}
    positions = int(text_cfg.get("max_position_embeddings", 77))
    width = int(config.get("projection_dim", 512))
    m = cfg.model
    text = dataclasses.replace(
        m.text, model_path=path, hf_arch=None, random_init=None, use_projection=None, proj_hidden=0,
        max_length=min(m.text.max_length, positions),
    )  # fmt: skip
    video = dataclasses.replace(
        m.video, trunk="hf", pretrained_path=path, hf_arch=None, weights_path=None, use_projection=True,
        frame_diff=False, spatial_grid=1, frame_dim=width, image_size=side, proj_hidden=0,
    )  # fmt: skip
    model = dataclasses.replace(m, embed_dim=width, heads_init="identity", text=text, video=video)
    return dataclasses.replace(cfg, model=model)


def _read_config(path: str, source: str) -> dict:
    file = Path(path, "config.json")
    if not file.is_file():
        raise UserError(f"{source}: no config.json there (expected a Hugging Face CLIPModel directory)")
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{source}: config.json cannot be read ({e})") from None
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind not in IMAGE_TEXT_TYPES:
        raise UserError(
            f"{source} holds a {kind!r} model, not an image-text pair (a CLIPModel directory): for a vision or text "
            "model alone set model.video.pretrained_path / model.text.model_path in a config instead"
        )
    return config


def init_zero_shot(path: str | Path, out: str | Path, config: str = "clip") -> RunConfig:
    """Write a run directory ``out`` from the image-text model in ``path`` with no training: the model's own
    projections, temporal mean pooling, frozen trunks. ``mmrec encode`` + ``mmrec search`` work on it at once."""
    out = Path(out)
    if (out / "config.json").exists() or has_train_state(out):
        raise UserError(f"{out} already holds a run: choose a new --out")
    cfg = pretrained_config(load_config(config), path)
    video = dataclasses.replace(cfg.model.video, temporal="mean", trainable_layers=0)
    text = dataclasses.replace(cfg.model.text, trainable_layers=0)
    cfg = dataclasses.replace(cfg, zero_shot=True, model=dataclasses.replace(cfg.model, video=video, text=text))
    model = create_model(cfg.model).eval()
    save_model(model, cfg, out)
    return cfg
