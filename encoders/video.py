"""Video tower: a frame trunk (a torchvision CNN, or the vision half of a local Hugging Face image-text model),
order-aware temporal pooling, projection head.

Each video becomes ONE vector: all pooling happens before the dot product, so the FAISS index serves exactly
the model that was trained.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from encoders.heads import ProjectionHead
from encoders.hf_vision import HFFrameTrunk, load_hf_trunk
from encoders.weights import SHOWN, PretrainedWeightsError, check_match, ignored

CLASSIFIER_PREFIXES = ("fc.", "classifier.")  # the torchvision classifier heads (resnet; mobilenet/efficientnet)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class VideoTowerConfig:
    trunk: str = "resnet18"  # torchvision model name: resnet10/18/34/50, mobilenet_v3_small/large, efficientnet_b0;
    # or "hf": the vision half of the image-text model in pretrained_path (CLIP, SigLIP), its pooled output per frame
    pretrained_path: str | None = None  # trunk hf: local Hugging Face model dir (never downloaded), read strictly
    use_projection: bool = True  # trunk hf: frames through the model's own visual_projection when it has one
    # trunk hf without pretrained_path: the architecture + preprocessing to rebuild (what the tower read from its
    # directory; a checkpoint records it, and carries the weights). None with trunk hf needs pretrained_path.
    hf_arch: dict | None = None
    weights_path: str | None = None  # local torchvision state_dict (.pth/.safetensors); None = random init
    # Loading weights_path is strict: every trunk key from the file, every file key into the trunk, same shapes,
    # except keys under these prefixes (default: the classifier head the trunk drops anyway, so a file with or
    # without its head loads). Add a prefix only for a remainder you know is harmless.
    weights_ignore: list[str] = field(default_factory=lambda: list(CLASSIFIER_PREFIXES))
    # trunk layers trained: -1 all (a CNN trained from scratch, the default), 0 frozen (training computes its
    # features once per clip), n > 0 the last n transformer layers of an hf trunk and everything after them
    trainable_layers: int = -1
    num_frames: int = 8  # T frames sampled uniformly per clip
    image_size: int = 112  # frames are resized to image_size x image_size by the decoder
    spatial_grid: int = 2  # trunk map pooled to grid x grid cells: keeps where the object is (motion needs it)
    frame_dim: int = 256  # per-frame feature width after the trunk
    frame_diff: bool = True  # add the difference to the next frame as 3 more input channels (TSN's RGB-diff)
    temporal: str = "transformer"  # "transformer" | "conv" | "mean" (mean cannot tell left from right)
    temporal_layers: int = 1  # transformer layers over time
    temporal_heads: int = 4  # attention heads of the temporal transformer
    proj_hidden: int = 512  # hidden width of the projection MLP (0 = linear)
    dropout: float = 0.1  # dropout in the temporal module and projection MLP


def build_hf(cfg: VideoTowerConfig) -> HFFrameTrunk:
    """The ``hf`` frame trunk: loaded strictly from ``pretrained_path``, or rebuilt from ``hf_arch`` (a checkpoint's
    record, whose weights it carries). The options that feed a CNN's map must say that the model's per-frame
    embedding is used as it is, at its processor's resolution: a mismatch is refused, naming what to set."""
    if cfg.pretrained_path:
        ignore = [cfg.weights_ignore] if isinstance(cfg.weights_ignore, str) else list(cfg.weights_ignore)
        trunk = load_hf_trunk(cfg.pretrained_path, cfg.use_projection, ignore)
    elif cfg.hf_arch:
        trunk = HFFrameTrunk(cfg.hf_arch)
    else:
        raise ValueError("model.video.trunk hf needs model.video.pretrained_path (a local Hugging Face model dir)")
    fix = {
        "frame_diff": (cfg.frame_diff, False),  # the model was trained on RGB: no difference channels
        "spatial_grid": (cfg.spatial_grid, 1),  # a pooled vector per frame, no map to grid
        "frame_dim": (cfg.frame_dim, trunk.out_dim),  # the model's own embedding width
        "image_size": (cfg.image_size, trunk.image_size),  # decode at the processor's resolution
        "weights_path": (cfg.weights_path, None),  # the weights come from pretrained_path
    }
    wrong = [f"{k}: {json.dumps(want)}" for k, (got, want) in fix.items() if got != want]
    if wrong:
        where = cfg.pretrained_path or "its recorded architecture"
        raise ValueError(
            f"model.video.trunk hf ({where}) uses the model's per-frame embedding at its processor's resolution: "
            f"set model.video.{', '.join(wrong)}"
        )
    return trunk


def _resnet10(**kwargs: object) -> nn.Module:
    from torchvision.models.resnet import BasicBlock, ResNet

    return ResNet(BasicBlock, [1, 1, 1, 1], **kwargs)


def build_cnn(
    name: str,
    weights_path: str | None = None,
    in_channels: int = 3,
    weights_ignore: Sequence[str] = CLASSIFIER_PREFIXES,
) -> tuple[nn.Module, int]:
    """A torchvision CNN without its classifier: ``[N, in_channels, H, W] -> [N, C, h, w]``, and ``C``.

    ``weights_path`` is loaded strictly (:func:`load_strict`); keys under ``weights_ignore`` may differ.
    """
    import torchvision

    model = _resnet10() if name == "resnet10" else torchvision.models.get_model(name, weights=None)
    if weights_path:
        weights_ignore = [weights_ignore] if isinstance(weights_ignore, str) else list(weights_ignore)
        load_strict(model, weights_path, weights_ignore, f"model.video.weights_path {weights_path} ({name})")
    if name.startswith("resnet"):
        body = nn.Sequential(*list(model.children())[:-2])  # drop avgpool + fc
        channels = model.fc.in_features
    elif hasattr(model, "features"):
        body = model.features
        channels = _out_channels(body)
    else:
        raise ValueError(f"unsupported video trunk {name!r}: use a resnet, mobilenet or efficientnet")
    if in_channels != 3:
        _widen_first_conv(body, in_channels)
    return body, channels


def _widen_first_conv(body: nn.Module, in_channels: int) -> None:
    """Give the stem conv more input channels; RGB weights are kept, the new channels start at zero."""
    for parent in body.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                conv = nn.Conv2d(
                    in_channels,
                    child.out_channels,
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    child.dilation,
                    child.groups,
                    child.bias is not None,
                )
                with torch.no_grad():
                    conv.weight.zero_()
                    conv.weight[:, :3] = child.weight
                    nn.init.kaiming_normal_(conv.weight[:, 3:], mode="fan_out", nonlinearity="relu")
                    if child.bias is not None:
                        conv.bias.copy_(child.bias)
                setattr(parent, child_name, conv)
                return
    raise ValueError("no 3-channel stem convolution found to widen")


def _out_channels(body: nn.Module) -> int:
    with torch.no_grad():
        return int(body(torch.zeros(1, 3, 64, 64)).shape[1])


def load_strict(model: nn.Module, path: str, ignore: Sequence[str], source: str) -> None:
    """Load the state dict at ``path`` into ``model``: missing, unexpected or wrongly shaped keys (outside the
    ``ignore`` prefixes) raise one :class:`PretrainedWeightsError` naming them, instead of a silently random trunk."""
    state = {k: v for k, v in _load_state_dict(path, source).items() if not ignored(k, ignore)}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]  # a counter
    unexpected = [k for k in state if k not in expected]
    shapes = {k: (tuple(v.shape), tuple(expected[k].shape)) for k, v in state.items() if k in expected}
    mismatched = [(k, got, want) for k, (got, want) in shapes.items() if got != want]
    check_match(source, missing, unexpected, mismatched, ignore, "model.video.weights_ignore")
    try:
        model.load_state_dict(state, strict=False)  # every key checked above; ignored ones keep their init
    except RuntimeError as e:
        raise PretrainedWeightsError(f"{source} does not fit the model: {_first_line(e)}") from None


def _load_state_dict(path: str, source: str) -> dict[str, torch.Tensor]:
    """The flat ``{key: tensor}`` dict of a ``.safetensors`` or ``.pth`` file (read with ``weights_only``)."""
    import os
    import pickle

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise PretrainedWeightsError(f"{source}: no such file")
    try:
        if path.endswith(".safetensors"):
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)  # weights_only: no arbitrary unpickling
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, SafetensorError) as e:
        raise PretrainedWeightsError(f"{source} cannot be read as a state dict: {_first_line(e)}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = list(state)[:SHOWN] if isinstance(state, dict) else type(state).__name__
        raise PretrainedWeightsError(f"{source} is not a flat state dict of tensors (holds {keys})")
    return state


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def temporal_trend(x: torch.Tensor) -> torch.Tensor:
    """Least-squares slope of each feature over time, ``[B, T, F] -> [B, F]``: which way things change.

    A clip played backwards has the opposite slope, so direction (left vs right, growing vs shrinking) is
    read off directly instead of being learned through position embeddings.
    """
    T = x.shape[1]
    t = torch.arange(T, dtype=x.dtype, device=x.device) - (T - 1) / 2
    denom = (t * t).sum().clamp(min=1.0)
    return torch.einsum("btf,t->bf", x, t / denom)


class TemporalTransformer(nn.Module):
    """Frame features ``[B, T, F]`` -> ``[B, F]``: a transformer with position embeddings, mean-pooled, plus
    a projection of the features' temporal trend (order-aware by construction)."""

    def __init__(self, dim: int, num_frames: int, layers: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, num_frames, dim))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.trend = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _B, T, _F = x.shape
        h = self.encoder(x + self.pos[:, :T])  # [B, T, F]
        return self.norm(h.mean(1) + self.trend(temporal_trend(x)))  # [B, F]


class TemporalConv(nn.Module):
    """Two temporal convolutions then a mean: sees the order of neighbouring frames."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(dim, dim, 3, padding=1), nn.GELU(), nn.Dropout(dropout), nn.Conv1d(dim, dim, 3, padding=1)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x.transpose(1, 2)).transpose(1, 2)  # [B, T, F]
        return self.norm((x + y).mean(1))  # [B, F]


class TemporalMean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1)  # [B, F]


class VideoTower(nn.Module):
    """Frames ``[B, T, 3, H, W]`` (float in [0, 1] or uint8) -> L2-normalised ``[B, D]``."""

    def __init__(self, cfg: VideoTowerConfig, out_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.hf_arch: dict | None = None  # trunk hf: what a checkpoint records to rebuild the trunk without its dir
        if cfg.trunk == "hf":
            self.cnn: nn.Module = build_hf(cfg)
            self.hf_arch = self.cnn.arch
            self.frame_proj: nn.Module = nn.Identity()  # the model's own per-frame embedding, as it is
        else:
            self.cnn, channels = build_cnn(cfg.trunk, cfg.weights_path, 6 if cfg.frame_diff else 3, cfg.weights_ignore)
            g = cfg.spatial_grid
            self.spatial = nn.AdaptiveAvgPool2d(g)
            self.frame_proj = nn.Sequential(nn.Linear(channels * g * g, cfg.frame_dim), nn.GELU())
        if cfg.temporal == "transformer":
            self.temporal: nn.Module = TemporalTransformer(
                cfg.frame_dim, cfg.num_frames, cfg.temporal_layers, cfg.temporal_heads, cfg.dropout
            )
        elif cfg.temporal == "conv":
            self.temporal = TemporalConv(cfg.frame_dim, cfg.dropout)
        elif cfg.temporal == "mean":
            self.temporal = TemporalMean()
        else:
            raise ValueError(f"unknown temporal pooling {cfg.temporal!r}: use transformer, conv or mean")
        self.head = ProjectionHead(cfg.frame_dim, out_dim, cfg.proj_hidden, cfg.dropout)
        self.out_dim = out_dim
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.trunk_frozen = self._set_trainable(cfg.trainable_layers)

    def _set_trainable(self, n: int) -> bool:
        """Freeze the trunk (0), train it all (-1) or, for an hf trunk, its last ``n`` layers; whether it is frozen."""
        if not isinstance(n, int) or isinstance(n, bool) or n < -1:
            raise ValueError(f"model.video.trainable_layers must be -1 (all), 0 (frozen) or a layer count, got {n!r}")
        if isinstance(self.cnn, HFFrameTrunk):
            self.cnn.set_trainable(n)
        elif n > 0:
            raise ValueError(f"model.video.trainable_layers {n}: a CNN trunk is trained whole (-1) or frozen (0)")
        else:
            for p in self.cnn.parameters():
                p.requires_grad = n < 0
        return n == 0

    def train(self, mode: bool = True) -> VideoTower:
        """As ``nn.Module.train``, but a frozen trunk always runs as at inference (no dropout, BatchNorm
        statistics fixed): its features are the same in training and at encode time, so they can be cached."""
        super().train(mode)
        if getattr(self, "trunk_frozen", False):
            self.cnn.eval()
        return self

    def trunk_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames ``[B, T, 3, H, W]`` -> the trunk's per-frame features ``[B, T, C]`` (an hf trunk's embeddings, a
        CNN's map pooled to the spatial grid): everything before the trained frame projection."""
        B, T, C, H, W = frames.shape
        x = frames.reshape(B * T, C, H, W)
        if isinstance(self.cnn, HFFrameTrunk):  # preprocessed as its processor says, inside the trunk
            return self.cnn(x).view(B, T, -1)  # [B*T, F] -> [B, T, F]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        x = (x - self.mean) / self.std
        if self.cfg.frame_diff:
            v = x.view(B, T, C, H, W)
            diff = v[:, 1:] - v[:, :-1] if T > 1 else torch.zeros_like(v)  # [B, T-1, C, H, W]
            diff = torch.cat([diff, diff[:, -1:]], 1) if T > 1 else diff  # the last frame reuses the last diff
            x = torch.cat([v, diff], 2).view(B * T, 2 * C, H, W)
        x = x.to(memory_format=torch.channels_last)
        fmap = self.cnn(x)  # [B*T, C', h, w]
        return self.spatial(fmap).flatten(1).view(B, T, -1)  # [B, T, C'*g*g]

    def pool_trunk_features(self, feats: torch.Tensor) -> torch.Tensor:
        """Per-frame trunk features ``[B, T, C]`` -> per-clip feature ``[B, frame_dim]`` (frame projection, then
        temporal pooling): the trained part of the tower before its head."""
        B, T, _ = feats.shape
        return self.temporal(self.frame_proj(feats.flatten(0, 1)).view(B, T, -1))  # [B, T, F] -> [B, F]

    def forward_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Per-clip feature ``[B, frame_dim]`` after temporal pooling."""
        return self.pool_trunk_features(self.trunk_features(frames))

    def forward_head(self, features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.head(features, normalize=normalize)  # [B, D]

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(frames))
