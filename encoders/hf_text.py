"""Local Hugging Face text models for the text tower: the directory's layout, its pooling, the CLIP text half.

Three layouts, always read from disk (never a hub download):

- a plain transformers directory (``config.json`` + weights): masked mean of the last hidden states;
- a sentence-transformers directory (``modules.json``, ``1_Pooling/config.json``; the transformer in the root or
  in a subfolder such as ``0_Transformer/``): the pooling its config names (mean, cls or max). A ``2_Normalize``
  module is irrelevant: the tower's head projects and normalises;
- a CLIP directory (``config.json`` ``model_type`` ``clip`` or ``clip_text_model``): the EOS token's state
  (``pooler_output``), through the model's ``text_projection`` when it has one and ``model.text.use_projection``
  allows it. Of a ``CLIPModel`` directory only the text half is loaded; the vision half is left out explicitly.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

LOG = logging.getLogger(__name__)
POOLINGS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max"}
CLIP_TYPES = ("clip", "clip_text_model")
VISION_HALF = ("vision_model.", "visual_projection.", "logit_scale")  # a CLIPModel's keys the text tower never uses
EOS = "eos"  # CLIP's pooling: the state at the first end-of-text token (its pooler_output)


class TextModelConfigError(ValueError):
    """A text model directory whose layout or pooling config the tower cannot use: one line naming the file."""


@dataclass(frozen=True)
class TextModelDir:
    """Where the transformer of a text model directory lives and how its features are pooled."""

    path: str  # the transformer's directory: config.json, weights, tokenizer
    pooling: str  # mean | cls | max | eos
    model_type: str  # config.json's model_type ("" if unreadable: loading then says why)
    has_projection: bool  # a CLIP text_projection among the weights (CLIPModel, CLIPTextModelWithProjection)

    @property
    def is_clip(self) -> bool:
        return self.model_type in CLIP_TYPES


def resolve(path: str, source: str) -> TextModelDir:
    """The layout of the local model directory ``path``; ``source`` names it in errors."""
    root = Path(path)
    transformer, pooling_dir = _st_modules(root, source)
    config = _read_json(transformer / "config.json", source, missing_ok=True) or {}
    model_type = str(config.get("model_type", ""))
    if model_type in CLIP_TYPES:
        archs = config.get("architectures") or []
        has_projection = model_type == "clip" or "CLIPTextModelWithProjection" in archs
        return TextModelDir(str(transformer), EOS, model_type, has_projection)
    pooling = read_pooling(pooling_dir / "config.json", source) if pooling_dir is not None else "mean"
    return TextModelDir(str(transformer), pooling, model_type, False)


def _st_modules(root: Path, source: str) -> tuple[Path, Path | None]:
    """The transformer's and the pooling config's directories of a sentence-transformers layout (else root, None)."""
    modules = _read_json(root / "modules.json", source, missing_ok=True)
    if modules is None:
        return root, (root / "1_Pooling" if (root / "1_Pooling" / "config.json").is_file() else None)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise TextModelConfigError(f"{source}: modules.json is not a list of modules")
    by_kind = {str(m.get("type", "")).rsplit(".", 1)[-1]: str(m.get("path", "")) for m in modules}
    transformer = _inside(root, by_kind.get("Transformer", ""), source)
    pooling = by_kind.get("Pooling")
    return transformer, (None if pooling is None else _inside(root, pooling, source))


def _inside(root: Path, sub: str, source: str) -> Path:
    path = (root / sub).resolve()
    if path != root.resolve() and root.resolve() not in path.parents:
        raise TextModelConfigError(f"{source}: modules.json points outside the directory ({sub!r})")
    return path


def _read_json(path: Path, source: str, missing_ok: bool = False) -> Any:
    if missing_ok and not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TextModelConfigError(f"{source}: cannot read {path.name} ({why})") from None


def read_pooling(path: Path, source: str) -> str:
    """The one pooling mode a sentence-transformers ``1_Pooling/config.json`` turns on: mean, cls or max."""
    config = _read_json(path, source)
    where = f"{source}: {path.parent.name}/{path.name}"
    if not isinstance(config, dict):
        raise TextModelConfigError(f"{where} is not a JSON object")
    on = sorted(k for k, v in config.items() if k.startswith("pooling_mode_") and v is True)
    unsupported = [k for k in on if k not in POOLINGS]
    if unsupported or len(on) != 1:
        why = f"unsupported {unsupported[0]}" if unsupported else f"{len(on)} modes on ({', '.join(on) or 'none'})"
        raise TextModelConfigError(f"{where}: {why}; the text tower needs exactly one of {', '.join(POOLINGS)}")
    return POOLINGS[on[0]]


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Token states ``[B, L, H]`` -> ``[B, H]``: masked mean, the first token (cls) or masked max."""
    if mode == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1)  # [B, L, 1]
    if mode == "max":
        return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).amax(1)
    mask = mask.to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def load_clip_text(layout: TextModelDir, use_projection: bool | None, source: str) -> tuple[nn.Module, dict[str, Any]]:
    """The text half of a CLIP directory (with its projection unless refused) and transformers' loading info,
    the vision half of a ``CLIPModel`` (and an unused projection) already taken out of the unexpected keys."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    project = layout.has_projection if use_projection is None else bool(use_projection)
    if project and not layout.has_projection:
        raise TextModelConfigError(
            f"{source} has no text_projection (a CLIPTextModel): set model.text.use_projection: false"
        )
    cls = CLIPTextModelWithProjection if project else CLIPTextModel
    kwargs: dict[str, Any] = {}
    if layout.model_type == "clip":  # a CLIPModel's text_projection is sized by its top-level projection_dim
        from transformers import CLIPConfig

        full = CLIPConfig.from_pretrained(layout.path, local_files_only=True)
        full.text_config.projection_dim = full.projection_dim
        kwargs["config"] = full.text_config
    model, info = cls.from_pretrained(
        layout.path, local_files_only=True, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
    )
    unused = list(VISION_HALF) if layout.model_type == "clip" else []
    unused += [] if project else ["text_projection."]
    unexpected = list(info.get("unexpected_keys", ()))
    left = [k for k in unexpected if k.startswith(tuple(unused))]
    if left:
        LOG.info("%s: text half loaded; %d tensors of the rest (%s) left out", source, len(left), ", ".join(unused))
    return model, {**info, "unexpected_keys": [k for k in unexpected if k not in set(left)]}


def encoder_layers(trunk: nn.Module) -> nn.ModuleList | None:
    """The trunk's stack of transformer layers (BERT-like ``encoder.layer``, CLIP ``[text_model.]encoder.layers``)."""
    for owner in (trunk, getattr(trunk, "text_model", None)):
        encoder = getattr(owner, "encoder", None)
        for name in ("layer", "layers"):
            layers = getattr(encoder, name, None)
            if isinstance(layers, nn.ModuleList):
                return layers
    return None
