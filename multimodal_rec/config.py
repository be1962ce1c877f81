"""Run configuration: one dataclass per component, nested in ``RunConfig``, loaded from YAML presets."""

from __future__ import annotations

import dataclasses
import importlib.util
import typing
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from encoders import TextTowerConfig, UserTowerConfig, VideoTowerConfig
from multimodal_rec.errors import UserError

# the presets ship inside the package (package data), so a wheel install has them too; ./configs links here
CONFIG_DIR = Path(str(resources.files("multimodal_rec") / "configs"))
T = TypeVar("T")


@dataclass
class ModelConfig:
    embed_dim: int = 256  # D: width of the shared, L2-normalised embedding space
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    video: VideoTowerConfig = field(default_factory=VideoTowerConfig)
    user: UserTowerConfig = field(default_factory=UserTowerConfig)
    init_temperature: float = 0.07  # initial softmax temperature of both InfoNCE losses (learnable)
    # "identity": the text and video heads start as the identity (linear heads, proj_hidden 0, of width embed_dim),
    # so the towers start in a pretrained image-text model's own joint space (its projections); "random": as usual
    heads_init: str = "random"
    popularity_prior: bool = True  # rec scores add w * log(1 + item's training interactions), w learned;
    # behaviour on the item side (a hybrid): an item never seen in training has count 0 and is ranked by content


@dataclass
class TrainConfig:
    epochs: int = 10  # passes over the training videos
    batch_size: int = 64  # captioned videos per step (text<->video loss)
    rec_batch_size: int = 64  # user-history examples per step (history -> next video loss)
    lr: float = 1e-3  # peak AdamW learning rate of towers trained from scratch
    trunk_lr: float = 2e-5  # learning rate of a partially/fully unfrozen text trunk
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_steps: int = 50  # linear warm-up before the cosine decay
    grad_clip: float = 1.0  # max global gradient norm (0 = off)
    w_text_video: float = 1.0  # weight of the symmetric text<->video InfoNCE
    w_rec: float = 1.0  # weight of the user-history -> next video InfoNCE
    min_history: int = 1  # fewest earlier events a training example needs
    rec_trains_video: bool = False  # False: the rec loss trains the user tower only (video targets embedded
    # without gradient, ~1.5x cheaper steps); text<->video alone shapes the video tower
    augment: float = 0.0  # strength of per-clip random zoom/shift/brightness (same for all frames: motion is kept);
    # 1.0 = shift 10%, zoom 15%, brightness 10%; 0 = off
    seed: int = 0  # seeds python, numpy and torch
    num_workers: int = 0  # DataLoader workers for frame decoding in the cache pass
    decode_backend: str = "auto"  # "auto" (decord, PyAV where decord fails), "decord" or "pyav"
    log_every: int = 10  # steps between log lines
    grad_accum: int = 1  # micro-batches per optimizer step (effective batch = batch_size * grad_accum * processes)
    checkpoint_every: int = 0  # also checkpoint every N optimizer steps inside an epoch (0 = at epoch ends only)
    max_steps: int = 0  # stop after this many optimizer steps with a resumable checkpoint (0 = all epochs); the
    # learning-rate schedule still spans every epoch, so --resume continues the run exactly
    early_stop_metric: str = ""  # validation metric to maximise after each epoch ("" = no validation, no stop)
    early_stop_patience: int = 3  # epochs without improvement before stopping; the best epoch's weights are kept
    hard_negatives: int = 0  # extra negatives per example mined from an exact index of the current item vectors
    logq_correction: bool = False  # subtract log(item frequency) from in-batch logits (sampling-bias correction)
    device: str = "auto"  # "auto" (cuda when present), "cpu" or "cuda"


@dataclass
class IndexConfig:
    factory: str = "auto"  # "auto": by catalog size (Flat < 50k, HNSW32 < 1M, IVF-PQ + exact re-rank above), or a
    # FAISS index factory string; inner product metric on L2-normalised vectors


@dataclass
class EncodeConfig:
    segment_seconds: float = 5.0  # windows of about this length; <= 0: one segment per video
    max_segments: int = 64  # cap per video (equal windows covering the whole video)
    shots: bool = False  # cut at shot boundaries first (PySceneDetect), then each shot into ~segment_seconds windows
    text_columns: list[str] = field(default_factory=lambda: ["title", "description", "tags"])  # catalog text
    # encoded by the text tower (only the columns present; non-blank values joined with ". ")
    text_weight: float = 0.5  # weight of the video's text in its item vector (0: content only)

    def check(self) -> None:
        """Refuse settings that cannot be meant, in one line each."""
        if not isinstance(self.max_segments, int) or isinstance(self.max_segments, bool) or self.max_segments < 1:
            raise UserError(f"encode.max_segments must be an integer >= 1, got {self.max_segments!r}")
        w = self.text_weight
        if isinstance(w, bool) or not isinstance(w, int | float) or not 0.0 <= w <= 1.0:
            raise UserError(f"encode.text_weight must be a number in [0, 1], got {w!r}")
        s = self.segment_seconds
        if isinstance(s, bool) or not isinstance(s, int | float) or s != s or s in (float("inf"), float("-inf")):
            raise UserError(f"encode.segment_seconds must be a finite number (<= 0: one segment), got {s!r}")
        if not isinstance(self.shots, bool):
            raise UserError(f"encode.shots must be true or false, got {self.shots!r}")
        if self.shots and importlib.util.find_spec("scenedetect") is None:
            raise UserError('encode.shots needs PySceneDetect: pip install "multimodal-rec[shots]" (or scenedetect)')
        if not isinstance(self.text_columns, list) or not all(isinstance(c, str) for c in self.text_columns):
            raise UserError(f"encode.text_columns must be a list of column names, got {self.text_columns!r}")


@dataclass
class RunConfig:
    name: str = "custom"  # preset name, recorded in checkpoints and bundles
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)  # how `mmrec encode` cuts and describes videos
    zero_shot: bool = False  # written by `mmrec init --from-pretrained`: nothing trained, so the user tower is
    # random and recommending is refused (search works: the image-text model's own joint space); training clears it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_config(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build config dataclass ``cls`` from a dict, nested sections included, refusing unknown keys by full name.

    ``where`` is the section's dotted name in messages (``model.video``); any dataclass-typed field is a section.
    """
    data = data or {}
    if not isinstance(data, dict):
        raise UserError(f"config section {where or 'root'!r} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"unknown config key {where + '.' if where else ''}{unknown[0]} (known: {', '.join(fields)})")
    kwargs = {}
    for name, value in data.items():
        sub = _nested_config_type(cls, name)
        kwargs[name] = build_config(sub, value, f"{where}.{name}" if where else name) if sub else value
    return cls(**kwargs)


def _nested_config_type(cls: type, name: str) -> type | None:
    """The dataclass type of field ``name`` of ``cls`` (a nested config section), or None for a plain value.

    Read from the class's own annotations (resolved in its module, as ``from __future__ import annotations``
    leaves them strings), so a new config class nests without being registered anywhere.
    """
    hint = typing.get_type_hints(cls).get(name)
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    return build_config(RunConfig, data)


def refuse_unsupported(section: Any, names: Iterable[str], task: str, where: str = "train") -> None:
    """Refuse, by name, the options of a config dataclass set away from their defaults that ``task`` would
    ignore: a silently ignored option reads as a result it did not produce."""
    default = type(section)()
    for name in names:
        value = getattr(section, name)
        if value != getattr(default, name):
            raise UserError(f"{where}.{name}={value!r} is not supported by {task}: it would be ignored; remove it")


def list_presets() -> list[str]:
    """Names of the presets shipped in the package (``multimodal_rec/configs/``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_config(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load a preset by name (``tiny``, ``small``, ``base``) or a YAML file by path."""
    path = Path(name_or_path)
    if not path.suffix and not path.is_file():  # a preset name (a directory of the same name is not a config)
        path = CONFIG_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise UserError(f"unknown config preset {str(name_or_path)!r} (presets: {', '.join(list_presets())})")
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    data.setdefault("name", path.stem)
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return config_from_dict(data)
