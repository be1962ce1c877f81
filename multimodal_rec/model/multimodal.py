"""The combined model: three towers in one embedding space, built only through ``create_model``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from encoders import TextTower, UserTower, VideoTower
from encoders.text import TextModelUnavailable, load_tokenizer
from multimodal_rec.config import ModelConfig
from multimodal_rec.errors import InfrastructureError, UserError
from multimodal_rec.model.loss import InfoNCELoss
from multimodal_rec.model.text_features import frozen_trunk_features, tokenize, trunk_features

LOG = logging.getLogger(__name__)


class MultimodalModel(nn.Module):
    """Text, video and user towers plus the two contrastive losses (their temperatures are parameters)."""

    def __init__(self, cfg: ModelConfig, tokenizer: Any = None) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.embed_dim
        self.text = TextTower(cfg.text, D)
        self.video = VideoTower(cfg.video, D)
        self.user = UserTower(cfg.user, self.text.feat_dim, D)
        self.loss_tv = InfoNCELoss(cfg.init_temperature, symmetric=True)
        self.loss_rec = InfoNCELoss(cfg.init_temperature, symmetric=False)
        self.pop_weight = nn.Parameter(torch.zeros(()))  # weight of log(1 + training interactions) in rec logits
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.text)
        self._feature_cache: dict[str, torch.Tensor] = {}
        self.cache_text_features = True  # keep frozen-trunk features per string (training); off when serving

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def clear_text_cache(self) -> None:
        """Forget the cached frozen-trunk features (training keeps them per string; see :meth:`text_features`)."""
        self._feature_cache.clear()

    # --- text -------------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return tokenize(self.tokenizer, texts, self.cfg.text.max_length, self.device)

    def text_features(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Text-trunk features ``[N, H]``.

        With a frozen trunk and ``cache_text_features`` on (training), each string's features are computed
        once and kept; serving turns the cache off, since every new query string would stay in memory.
        """
        texts = list(texts)
        if not texts:
            return torch.zeros(0, self.text.feat_dim, device=self.device)
        if not self.text.trunk_frozen:
            return trunk_features(self.text, self.tokenizer, texts, batch_size, self.device)
        if not self.cache_text_features:
            return frozen_trunk_features(self.text, self.tokenizer, texts, batch_size, self.device)
        missing = list(dict.fromkeys(t for t in texts if t not in self._feature_cache))
        if missing:
            feats = frozen_trunk_features(self.text, self.tokenizer, missing, batch_size, self.device)
            self._feature_cache.update(zip(missing, feats, strict=True))
        return torch.stack([self._feature_cache[t] for t in texts])

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
    def history_batch(
        self, histories: Sequence[Sequence[str]], features: Callable[[list[str]], torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Histories (oldest first) -> item features ``[B, S, H]`` and mask ``[B, S]``, last ``max_history`` kept.
        ``features``: where item texts get their trunk features (default :meth:`text_features`; serving: its own)."""
        keep = self.cfg.user.max_history
        histories = [list(h)[-keep:] for h in histories]
        S = max(1, max((len(h) for h in histories), default=1))
        flat = [t for h in histories for t in h]
        feats = (features or self.text_features)(flat)  # [sum(len), H]
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

    def encode_user(
        self, histories: Sequence[Sequence[str]], features: Callable[[list[str]], torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Histories of item texts (oldest first) -> ``[B, D]`` and attention weights ``[B, S]``."""
        items, mask = self.history_batch(histories, features)
        return self.user(items, mask)


def create_model(cfg: ModelConfig, tokenizer: Any = None) -> MultimodalModel:
    """The only way to build a model: every tower from its config dataclass (``tokenizer``: the text trunk's, when
    it is not read from the text model's directory, e.g. the copy a checkpoint carries).

    A config value the towers cannot build (an unknown video trunk or temporal pooling) is a one-line
    :class:`UserError` naming the option; a text model package that cannot be imported is a one-line
    :class:`InfrastructureError` saying what to install.
    """
    _check_video_trunk(cfg.video.trunk)
    if cfg.heads_init not in ("random", "identity"):
        raise UserError(f"model.heads_init must be random or identity, got {cfg.heads_init!r}")
    try:
        model = MultimodalModel(cfg, tokenizer)
    except TextModelUnavailable as e:  # the environment, not the input: repaired by installing the package
        raise InfrastructureError(str(e)) from None
    except ValueError as e:  # the towers (which know nothing of UserError) refuse a value of their config
        raise UserError(f"model config refused: {str(e).splitlines()[0]}") from None
    if cfg.heads_init == "identity":
        _identity_head("text", model.text.head, model.text.feat_dim, cfg.embed_dim)
        _identity_head("video", model.video.head, cfg.video.frame_dim, cfg.embed_dim)
    return model


@torch.no_grad()
def _identity_head(name: str, head: nn.Module, width: int, dim: int) -> None:
    """Set a linear head to the identity: the tower's features (``width`` wide) enter the joint space as they are."""
    net = getattr(head, "net", None)
    if not isinstance(net, nn.Linear) or width != dim:
        raise UserError(
            f"model.heads_init identity needs a linear {name} head as wide as its features: set "
            f"model.{name}.proj_hidden: 0 and model.embed_dim: {width} "
            f"(now: {'a linear' if isinstance(net, nn.Linear) else 'an MLP'} head, embed_dim {dim})"
        )
    net.weight.copy_(torch.eye(dim))
    net.bias.zero_()


def _check_video_trunk(name: str) -> None:
    import torchvision

    if name not in ("resnet10", "hf") and name not in torchvision.models.list_models(torchvision.models):
        raise UserError(
            f"unknown model.video.trunk {name!r}: use resnet10/18/34/50, mobilenet_v3_small/large, efficientnet_b0 "
            "or hf (with model.video.pretrained_path)"
        )


def to_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()
