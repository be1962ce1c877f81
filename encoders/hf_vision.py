"""Frame trunk from a local Hugging Face image-text model directory (CLIP, SigLIP): one embedding per frame.

The directory is read once, never downloaded from: its config picks the vision model, its weights load strictly
(the text half of a full image-text directory is left out, by name), and its ``preprocessor_config.json`` gives
the resolution and normalisation the model was trained with. What was read is kept as a JSON-able ``arch`` record,
so a checkpoint that carries the trunk's weights rebuilds it without the directory.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from encoders.weights import PretrainedWeightsError, check_match, no_load_report

LOG = logging.getLogger(__name__)
PROCESSOR_FILE = "preprocessor_config.json"

# model_type of the directory -> (vision model_type, vision model class, key prefixes of the other tower's half)
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "clip": ("clip_vision_model", "CLIPVisionModelWithProjection", ("text_model.", "text_projection.", "logit_scale")),
    "clip_vision_model": ("clip_vision_model", "CLIPVisionModelWithProjection", ()),
    "siglip": ("siglip_vision_model", "SiglipVisionModel", ("text_model.", "logit_scale", "logit_bias")),
    "siglip_vision_model": ("siglip_vision_model", "SiglipVisionModel", ()),
}
VISION_CLASSES = {  # vision model_type -> (config class, model class)
    "clip_vision_model": ("CLIPVisionConfig", "CLIPVisionModelWithProjection"),
    "siglip_vision_model": ("SiglipVisionConfig", "SiglipVisionModel"),
}
PROJECTION = "visual_projection."  # CLIP's own image projection into the joint space (SigLIP has none)


class HFFrameTrunk(nn.Module):
    """Frames ``[N, 3, H, W]`` (uint8, or float in [0, 1]) -> per-frame embeddings ``[N, C]``: the vision model's
    pooled output, through its own ``visual_projection`` when ``arch["projection"]``; preprocessed as its processor
    says (resized to ``image_size`` if the frames differ, normalised with ``image_mean`` / ``image_std``)."""

    def __init__(self, arch: dict[str, Any], model: nn.Module | None = None) -> None:
        super().__init__()
        self.arch = arch
        if model is None:  # the architecture only (weights from a checkpoint, or random in tests)
            import transformers

            config_cls, model_cls = (getattr(transformers, n) for n in VISION_CLASSES[arch["model_type"]])
            model = model_cls(config_cls.from_dict(arch["config"]))
        self.vision = getattr(model, "vision_model", model)  # SigLIP's vision model is its transformer itself
        self.projection: nn.Module | None = model.visual_projection if arch["projection"] else None
        self.image_size = int(arch["image_size"])
        self.out_dim = int(arch["out_dim"])
        self.register_buffer("mean", torch.tensor(arch["image_mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(arch["image_std"]).view(1, 3, 1, 1), persistent=False)

    def set_trainable(self, n: int) -> None:
        """Train every weight (-1), none (0), or the last ``n`` transformer layers and everything after them (the
        final norm, a pooling head, the projection): the usual partial unfreezing of a pretrained trunk."""
        for p in self.parameters():
            p.requires_grad = n < 0
        if n <= 0:
            return
        layers = self.vision.encoder.layers
        if n > len(layers):
            raise ValueError(f"model.video.trainable_layers {n}: the vision trunk has {len(layers)} layers")
        after = [self.projection, getattr(self.vision, "post_layernorm", None), getattr(self.vision, "head", None)]
        for module in [*layers[len(layers) - n :], *after]:
            for p in module.parameters() if module is not None else ():
                p.requires_grad = True

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] frames ``[N, 3, H, W]`` -> the model's ``pixel_values`` ``[N, 3, S, S]``."""
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        S = self.image_size
        if x.shape[-2:] != (S, S):
            x = F.interpolate(x, size=(S, S), mode="bicubic", align_corners=False, antialias=True).clamp(0.0, 1.0)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.vision(pixel_values=self.preprocess(x)).pooler_output  # [N, hidden]
        return self.projection(pooled) if self.projection is not None else pooled  # [N, C]


def load_hf_trunk(path: str, use_projection: bool = True, ignore: Sequence[str] = ()) -> HFFrameTrunk:
    """The vision half of the image-text model in directory ``path``, loaded strictly (``local_files_only``).

    Missing, unexpected or misshapen weights raise one :class:`PretrainedWeightsError` naming them, except the
    other tower's half of a full image-text directory (left out, logged) and keys under ``ignore``. A CLIP directory
    without a ``visual_projection`` (a bare ``CLIPVisionModel``) gives the pooled output as the frame embedding.
    """
    import transformers

    source = f"model.video.pretrained_path {path}"
    config, family = _read_config(path, source)
    vision_type, model_cls, other_half = FAMILIES[family]
    processor = read_processor(path, source)
    if processor["image_size"] != config.image_size:
        raise PretrainedWeightsError(
            f"{source}: {PROCESSOR_FILE} crops to {processor['image_size']} but the model takes {config.image_size}"
        )
    try:
        with no_load_report():
            model, info = getattr(transformers, model_cls).from_pretrained(
                path,
                config=config,
                local_files_only=True,
                output_loading_info=True,
                ignore_mismatched_sizes=True,
                dtype=torch.float32,
            )
    except (OSError, ValueError, RuntimeError) as e:  # no weights there, a file transformers cannot read...
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PretrainedWeightsError(f"{source} cannot be loaded: {why}") from None
    missing, unexpected = list(info.get("missing_keys", ())), list(info.get("unexpected_keys", ()))
    mismatched = [(k, tuple(a), tuple(b)) for k, a, b in info.get("mismatched_keys", ())]
    left_out = [k for k in unexpected if k.startswith(other_half)] if other_half else []
    if left_out:
        LOG.info("%s: left out the text half of the image-text model (%d tensors)", source, len(left_out))
        unexpected = [k for k in unexpected if k not in set(left_out)]
    has_projection = hasattr(model, "visual_projection")
    if has_projection and f"{PROJECTION}weight" in missing:  # a bare CLIPVisionModel: no projection to use
        missing.remove(f"{PROJECTION}weight")
        if use_projection:
            LOG.info("%s has no visual_projection: the frame embedding is the pooled output", source)
        has_projection = False
    ignore = list(ignore) + ([] if use_projection else [PROJECTION])
    check_match(source, missing, unexpected, mismatched, ignore, "model.video.weights_ignore")
    projection = bool(use_projection and has_projection)
    arch = {
        "source": str(path),
        "model_type": vision_type,
        "config": config.to_dict(),
        "projection": projection,
        "out_dim": int(model.visual_projection.out_features if projection else config.hidden_size),
        **processor,
    }
    return HFFrameTrunk(arch, model)


def _read_config(path: str, source: str) -> tuple[Any, str]:
    """The vision config of directory ``path`` and the directory's family (its ``model_type``)."""
    from transformers import AutoConfig

    if not Path(path, "config.json").is_file():
        raise PretrainedWeightsError(f"{source}: no config.json there (expected a Hugging Face model directory)")
    try:
        full = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise PretrainedWeightsError(f"{source}: config.json cannot be read: {_first_line(e)}") from None
    family = full.model_type
    if family not in FAMILIES:
        raise PretrainedWeightsError(
            f"{source} holds a {family!r} model: use a CLIPModel, CLIPVisionModel, SiglipModel or SiglipVisionModel"
        )
    config = getattr(full, "vision_config", None) or full
    if hasattr(full, "vision_config") and hasattr(config, "projection_dim"):
        config.projection_dim = full.projection_dim  # CLIPModel's visual_projection is sized by the top level
    return config, family


def read_processor(path: str, source: str) -> dict[str, Any]:
    """``image_size``, ``image_mean`` and ``image_std`` from the directory's ``preprocessor_config.json``: the
    resolution (the crop when it center-crops, else the resize) and normalisation the model was trained with."""
    file = Path(path, PROCESSOR_FILE)
    if not file.is_file():
        raise PretrainedWeightsError(f"{source}: no {PROCESSOR_FILE} there (its image size and normalisation)")
    try:
        proc = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PretrainedWeightsError(f"{source}: {PROCESSOR_FILE} cannot be read: {_first_line(e)}") from None
    size = proc.get("crop_size") if proc.get("do_center_crop", False) else proc.get("size")
    side = _square_side(size if size is not None else proc.get("size"))
    if side is None:
        raise PretrainedWeightsError(f"{source}: {PROCESSOR_FILE} gives no square image size (size={size!r})")
    normalize = proc.get("do_normalize", True)
    mean = _three(proc.get("image_mean")) if normalize else [0.0, 0.0, 0.0]
    std = _three(proc.get("image_std")) if normalize else [1.0, 1.0, 1.0]
    if mean is None or std is None or min(std) <= 0:
        raise PretrainedWeightsError(f"{source}: {PROCESSOR_FILE} has no usable image_mean / image_std")
    return {"image_size": side, "image_mean": mean, "image_std": std}


def _square_side(size: Any) -> int | None:
    if isinstance(size, int):
        return size
    if isinstance(size, dict):
        if "shortest_edge" in size:
            return int(size["shortest_edge"])
        if size.get("height") == size.get("width") and isinstance(size.get("height"), int):
            return int(size["height"])
    return None


def _three(value: Any) -> list[float] | None:
    if isinstance(value, (int, float)):
        return [float(value)] * 3
    if isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value):
        return [float(v) for v in value]
    return None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
