"""The combined model: three towers in one embedding space, built only through ``create_model``."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from encoders import TextTower, UserTower, VideoTower
from encoders.text import load_tokenizer
from multimodal_rec.config import ModelConfig, RunConfig, config_from_dict
from multimodal_rec.errors import UserError
from multimodal_rec.loss import InfoNCELoss

LOG = logging.getLogger(__name__)
CHECKPOINT_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class MultimodalModel(nn.Module):
    """Text, video and user towers plus the two contrastive losses (their temperatures are parameters)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.embed_dim
        self.text = TextTower(cfg.text, D)
        self.video = VideoTower(cfg.video, D)
        self.user = UserTower(cfg.user, self.text.feat_dim, D)
        self.loss_tv = InfoNCELoss(cfg.init_temperature, symmetric=True)
        self.loss_rec = InfoNCELoss(cfg.init_temperature, symmetric=False)
        self.pop_weight = nn.Parameter(torch.zeros(()))  # weight of log(1 + training interactions) in rec logits
        self.tokenizer = load_tokenizer(cfg.text)
        self._feature_cache: dict[str, torch.Tensor] = {}
        self.cache_text_features = True  # keep frozen-trunk features per string (training); off when serving

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # --- text -------------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.cfg.text.max_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

    def text_features(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Text-trunk features ``[N, H]``.

        With a frozen trunk and ``cache_text_features`` on (training), each string's features are computed
        once and kept; serving turns the cache off, since every new query string would stay in memory.
        """
        texts = list(texts)
        if not texts:
            return torch.zeros(0, self.text.feat_dim, device=self.device)
        if not self.text.trunk_frozen:
            chunks = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
            return torch.cat([self.text.forward_features(**self.tokenize(c)) for c in chunks])
        if not self.cache_text_features:
            return self._frozen_features(texts, batch_size)
        missing = list(dict.fromkeys(t for t in texts if t not in self._feature_cache))
        if missing:
            self._feature_cache.update(zip(missing, self._frozen_features(missing, batch_size), strict=True))
        return torch.stack([self._feature_cache[t] for t in texts])

    @torch.no_grad()
    def _frozen_features(self, texts: list[str], batch_size: int) -> torch.Tensor:
        was_training = self.text.trunk.training
        self.text.trunk.eval()  # a frozen trunk always runs as at inference (no dropout)
        chunks = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
        feats = torch.cat([self.text.forward_features(**self.tokenize(c)).float() for c in chunks])
        self.text.trunk.train(was_training)
        return feats

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        """Texts -> ``[N, D]``."""
        return self.text.forward_head(self.text_features(texts), normalize=normalize)

    def rec_prior_coef(self) -> float:
        """Coefficient of ``log1p(count)`` in cosine units: rec score = u.v + coef * log1p(count)."""
        if not self.cfg.popularity_prior:
            return 0.0
        return float(self.pop_weight.detach() / self.loss_rec.scale().detach())

    # --- video ------------------------------------------------------------------------------------------
    def encode_video(self, frames: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Frames ``[B, T, 3, H, W]`` (uint8 or float in [0, 1]) -> ``[B, D]``."""
        frames = frames.to(self.device, non_blocking=True)
        return self.video.forward_head(self.video.forward_features(frames), normalize=normalize)

    # --- user -------------------------------------------------------------------------------------------
    def history_batch(self, histories: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Histories (oldest first) -> item features ``[B, S, H]`` and mask ``[B, S]``, last ``max_history`` kept."""
        keep = self.cfg.user.max_history
        histories = [list(h)[-keep:] for h in histories]
        S = max(1, max((len(h) for h in histories), default=1))
        flat = [t for h in histories for t in h]
        feats = self.text_features(flat)  # [sum(len), H]
        B, H = len(histories), self.text.feat_dim
        items = torch.zeros(B, S, H, device=self.device, dtype=feats.dtype)
        mask = torch.zeros(B, S, dtype=torch.bool, device=self.device)
        offset = 0
        for b, h in enumerate(histories):
            n = len(h)
            items[b, :n] = feats[offset : offset + n]
            mask[b, :n] = True
            offset += n
        return items, mask

    def encode_user(self, histories: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Histories of item texts (oldest first) -> ``[B, D]`` and attention weights ``[B, S]``."""
        items, mask = self.history_batch(histories)
        return self.user(items, mask)


def create_model(cfg: ModelConfig) -> MultimodalModel:
    """The only way to build a model: every tower from its config dataclass."""
    return MultimodalModel(cfg)


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


def to_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()
