"""Checkpoints: the one reader/writer of every file pair a run writes, tensors (safetensors, no pickle) + JSON.

Three kinds share it and one format version, ``CHECKPOINT_FORMAT``, that each file carries (the safetensors
metadata ``format`` and the JSON's ``format`` key):

- the model: ``model.safetensors`` + ``config.json`` (the full run config) + ``tokenizer/``. Loading rebuilds the
  model with :func:`create_model` and loads the weights strictly; only the frozen *packaged* text trunk is not
  saved (it is rebuilt from its package). Trunks read from a directory (an ``hf`` video trunk, a text
  ``model_path``) are saved and the config records their architectures (``hf_arch``), so loading rebuilds them
  without the directory.
- the training state: ``train_state.safetensors`` (optimizer moments, torch RNG) + ``train_state.json``
  (position in the run, optimizer param groups), what ``--resume`` continues from.
- any other module with a JSON-able config (the text-item model of ``mmrec eval --dataset``): its state dict
  + a JSON of its own name.

Training-state and text-item files written before the version was stamped on them carry none: they read as
format 1 (same layout). A ``config.json`` always carried it and still must.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from multimodal_rec.config import ModelConfig, RunConfig, config_from_dict
from multimodal_rec.errors import UserError
from multimodal_rec.model.multimodal import MultimodalModel, create_model

LOG = logging.getLogger(__name__)
CHECKPOINT_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "train_state.safetensors"
STATE_META = "train_state.json"
TOKENIZER_DIR = "tokenizer"
_RNG_KEY = "rng/torch"


# --- the file pair: tensors + JSON, each carrying the format version -------------------------------------
def write_checkpoint(
    out_dir: str | Path,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    *,
    tensors_file: str = WEIGHTS_FILE,
    meta_file: str = CONFIG_FILE,
) -> None:
    """``tensors`` (safetensors) and ``{"format": ..., **meta}`` (JSON) into ``out_dir``, each written atomically."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{tensors_file}.tmp"
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(cpu, str(tmp), metadata={"format": str(CHECKPOINT_FORMAT)})
    tmp.replace(out_dir / tensors_file)
    tmp_meta = out_dir / f".{meta_file}.tmp"
    tmp_meta.write_text(json.dumps({"format": CHECKPOINT_FORMAT, **meta}, indent=2))
    tmp_meta.replace(out_dir / meta_file)


def _check_format(value: Any, path: Path) -> None:
    if value != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: unsupported checkpoint format {value!r} (expected {CHECKPOINT_FORMAT})")


def read_meta(
    out_dir: str | Path,
    *,
    meta_file: str = CONFIG_FILE,
    tensors_file: str = WEIGHTS_FILE,
    unversioned_ok: bool = False,
) -> dict[str, Any]:
    """The JSON half of a checkpoint, checked for its format version (``format`` is dropped from the result).

    ``unversioned_ok``: a file of a kind written before the version was stamped on it reads as format 1.
    """
    out_dir = Path(out_dir)
    path = out_dir / meta_file
    if not path.is_file() or not (out_dir / tensors_file).is_file():
        raise UserError(f"{out_dir} is not a checkpoint: expected {meta_file} and {tensors_file} in it")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path} is not a checkpoint description: expected a JSON object")
    _check_format(meta.pop("format", CHECKPOINT_FORMAT if unversioned_ok else None), path)
    return meta


def read_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, checked for its format version (files without one read as 1)."""
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        fmt = (f.metadata() or {}).get("format", str(CHECKPOINT_FORMAT))
        _check_format(int(fmt) if fmt.isdigit() else fmt, path)
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)


# --- the model --------------------------------------------------------------------------------------------
def trunk_from_source(model: MultimodalModel) -> bool:
    """Whether the text trunk is the frozen packaged model: then it is not saved, but rebuilt from its package on
    load, and a bundle pins it by :func:`trunk_digest` instead. Any other trunk (a ``model_path`` directory,
    ``random_init``, fine-tuned) is saved with the model, so a checkpoint needs no directory outside itself."""
    t = model.cfg.text
    return bool(model.text.trunk_frozen and t.random_init is None and not t.model_path and not t.hf_arch)


def trunk_outside(model: MultimodalModel) -> bool:
    """Whether the loaded text trunk came from outside the checkpoint: the packaged model, or (in a checkpoint
    written before trunks from directories were saved) its ``model_path`` directory."""
    t = model.cfg.text
    return bool(model.text.trunk_frozen and t.random_init is None and not t.hf_arch)


def _weights_to_save(model: MultimodalModel) -> dict[str, torch.Tensor]:
    """State dict without a frozen *packaged* text trunk: it is rebuilt from its package on load."""
    state = model.state_dict()
    if trunk_from_source(model):
        state = {k: v for k, v in state.items() if not k.startswith("text.trunk.")}
    return state


def save_model(
    model: MultimodalModel, cfg: RunConfig, out_dir: str | Path, extra: dict[str, Any] | None = None
) -> None:
    """``model.safetensors`` + ``config.json`` (format version, full run config) + ``tokenizer/`` into ``out_dir``.

    Trunks read from a directory (an ``hf`` video trunk, a ``model.text.model_path`` text model) have their
    weights in the file; the config gains their architectures (``model.video.hf_arch``, ``model.text.hf_arch``:
    what the towers read from their directories) and the tokenizer is saved beside them, so :func:`load_model`
    needs nothing outside ``out_dir``.
    """
    config = cfg.to_dict()
    if model.video.hf_arch is not None:
        config["model"]["video"]["hf_arch"] = model.video.hf_arch
    if model.text.hf_arch is not None:
        config["model"]["text"]["hf_arch"] = model.text.hf_arch
    write_checkpoint(out_dir, _weights_to_save(model), {"config": config, **(extra or {})})
    _save_tokenizer(model.tokenizer, Path(out_dir) / TOKENIZER_DIR)


def _save_tokenizer(tokenizer: Any, path: Path) -> None:
    """The tokenizer into ``path`` once (it never changes within a run), written aside then renamed into place."""
    if path.is_dir():
        return
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(str(tmp))
    tmp.replace(path)


def read_checkpoint_config(model_dir: str | Path) -> RunConfig:
    """The run config a checkpoint carries (``config.json``), checked for its format version."""
    model_dir = Path(model_dir)
    if not (model_dir / CONFIG_FILE).is_file() or not (model_dir / WEIGHTS_FILE).is_file():
        raise UserError(f"{model_dir} is not a trained model: expected {CONFIG_FILE} and {WEIGHTS_FILE} in it")
    return config_from_dict(read_meta(model_dir)["config"])


def load_weights(model: MultimodalModel, model_dir: str | Path) -> None:
    """Load ``model.safetensors`` into a model built from the same config, strictly; only a text trunk that came
    from outside the checkpoint (:func:`trunk_outside`) is not in it."""
    w_path = Path(model_dir) / WEIGHTS_FILE
    missing, unexpected = model.load_state_dict(read_tensors(w_path, model.device), strict=False)
    missing = [k for k in missing if not (k.startswith("text.trunk.") and trunk_outside(model))]
    if missing or unexpected:
        raise UserError(f"{w_path} does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}")


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> tuple[MultimodalModel, RunConfig]:
    """Rebuild a model from the config it carries, then load its weights (safetensors: no pickle).

    Trunks read from directories are rebuilt from the architectures the checkpoint records, not re-read from their
    ``pretrained_path`` / ``model_path`` (which may be gone): their weights, and the tokenizer, are in the checkpoint.
    """
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    cfg = read_checkpoint_config(model_dir)
    mcfg = without_trunk_sources(cfg.model)
    tokenizer = None
    if (model_dir / TOKENIZER_DIR).is_dir():
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir / TOKENIZER_DIR), local_files_only=True)
    elif mcfg.text.hf_arch and not mcfg.text.model_path:
        raise UserError(f"{model_dir} is incomplete: its text model's {TOKENIZER_DIR}/ is missing")
    model = create_model(mcfg, tokenizer)
    load_weights(model, model_dir)
    return model.to(device).eval(), cfg


def without_trunk_sources(mcfg: ModelConfig) -> ModelConfig:
    """``mcfg`` with trunks built from their recorded architectures (``hf_arch``) instead of their directories."""
    video, text = mcfg.video, mcfg.text
    if video.trunk == "hf" and video.hf_arch and video.pretrained_path:
        mcfg = dataclasses.replace(mcfg, video=dataclasses.replace(video, pretrained_path=None))
    if text.hf_arch and text.model_path:
        mcfg = dataclasses.replace(mcfg, text=dataclasses.replace(text, model_path=None))
    return mcfg


def same_model(a: ModelConfig, b: ModelConfig) -> bool:
    """Whether two model configs build the same model, whether or not the trunks' recorded architectures are
    filled in (a checkpoint records them; the config a run starts from has none)."""

    def plain(m: ModelConfig) -> ModelConfig:
        return dataclasses.replace(
            m,
            video=dataclasses.replace(m.video, hf_arch=None),
            text=dataclasses.replace(m.text, hf_arch=None),
        )

    return plain(a) == plain(b)


# --- any module with a JSON-able config (e.g. the text-item model) ----------------------------------------
def save_module(module: torch.nn.Module, out_dir: str | Path, meta: dict[str, Any], meta_file: str) -> None:
    """The module's whole state dict (buffers included) + ``meta`` as ``meta_file``."""
    write_checkpoint(out_dir, module.state_dict(), meta, meta_file=meta_file)


def load_module(module: torch.nn.Module, out_dir: str | Path, meta_file: str) -> dict[str, Any]:
    """Load what :func:`save_module` wrote into ``module`` (strictly); returns its meta."""
    meta = read_meta(out_dir, meta_file=meta_file, unversioned_ok=True)
    module.load_state_dict(read_tensors(Path(out_dir) / WEIGHTS_FILE))
    return meta


# --- the training state -----------------------------------------------------------------------------------
def save_train_state(out_dir: str | Path, opt: torch.optim.Optimizer, meta: dict[str, Any]) -> None:
    """Optimizer state + torch RNG (safetensors) and the position/metadata ``meta`` (JSON)."""
    sd = opt.state_dict()
    tensors = {f"{i}/{k}": v for i, s in sd["state"].items() for k, v in s.items()}
    tensors[_RNG_KEY] = torch.get_rng_state()
    meta = {**meta, "param_groups": sd["param_groups"]}
    write_checkpoint(out_dir, tensors, meta, tensors_file=STATE_FILE, meta_file=STATE_META)


def has_train_state(out_dir: str | Path) -> bool:
    return (Path(out_dir) / STATE_META).is_file()


def load_train_state(out_dir: str | Path, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore what :func:`save_train_state` wrote into ``opt`` and torch's RNG; returns the position/metadata."""
    out_dir = Path(out_dir)
    meta = read_meta(out_dir, meta_file=STATE_META, tensors_file=STATE_FILE, unversioned_ok=True)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in read_tensors(out_dir / STATE_FILE).items():
        if key == _RNG_KEY:
            torch.set_rng_state(v)
            continue
        i, name = key.split("/", 1)
        state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    return meta


# --- identity ---------------------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    """Hex sha256 of a whole file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def trunk_digest(model: MultimodalModel) -> str:
    """sha256 over the text trunk's state dict as in memory: each tensor's name, dtype, shape and bytes, in sorted
    name order, so the same weights give the same digest whatever the device or load order."""
    h = hashlib.sha256()
    for name, t in sorted(model.text.trunk.state_dict().items()):
        flat = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 over the weights and config: the embeddings of a video depend on nothing else."""
    model_dir = Path(model_dir)
    h = hashlib.sha256()
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        h.update(sha256_file(model_dir / name).encode())
    return h.hexdigest()
