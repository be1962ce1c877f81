"""The text trunk (transformer + pooling) on ONNX Runtime: exported from the served model on first use, cached.

``torch.onnx.export`` (the dynamo exporter, dynamic batch and sequence axes) writes the graph of
``TextTower.forward_features``: token ids + mask ``[B, L]`` -> pooled features ``[B, H]``; the projection head and
the user tower stay in torch (they are small and run on these features). ``onnx-int8`` quantises the MatMul weights
to int8, per output channel (``onnxruntime.quantization.quantize_dynamic``).

The graph is never downloaded: it is built from the loaded weights and cached in ``<bundle>/onnx/`` (or, when the
bundle directory is read-only, in ``$MMREC_CACHE_DIR`` / ``$XDG_CACHE_HOME/multimodal_rec`` / ``~/.cache/...``),
under a key that hashes the trunk's weights, its pooling, the precision and this exporter's version, so a stale graph
is never used. Written atomically (temporary file + rename), so worker processes exporting at once are safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multimodal_rec.errors import UserError
from multimodal_rec.model.checkpoint import trunk_digest
from multimodal_rec.model.text_features import tokenize

LOG = logging.getLogger(__name__)
ONNX_EXTRA = 'the onnx text backend needs the onnx extra: pip install "multimodal-rec[onnx]"'
EXPORT_VERSION = 1  # bump when the exported graph changes: every cached graph is then rebuilt
OPSET = 18
CACHE_DIR_NAME = "onnx"  # inside the bundle


def require_onnx() -> None:
    """One line naming the extra when onnx / onnxruntime cannot be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise UserError(ONNX_EXTRA) from None


class _Features(torch.nn.Module):
    """``TextTower.forward_features`` as a module of its own (what the graph holds)."""

    def __init__(self, tower: torch.nn.Module) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.tower.forward_features(input_ids, attention_mask)  # [B, L] -> [B, H]


def graph_key(model: Any, int8: bool) -> str:
    """What the cached graph depends on: trunk weights, pooling, precision, exporter version (16 hex digits)."""
    h = hashlib.sha256()
    h.update(trunk_digest(model).encode())
    h.update(
        f"|{model.text.pooling}|{model.text.projected}|{int8}|{EXPORT_VERSION}|{OPSET}|{torch.__version__}".encode()
    )
    return h.hexdigest()[:16]


def cache_dirs(bundle: Path | None) -> list[Path]:
    """Where a graph may be cached, in order: inside the bundle, then the user cache directory."""
    base = os.environ.get("MMREC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "multimodal_rec"
    )
    return [*([bundle / CACHE_DIR_NAME] if bundle is not None else []), Path(base) / CACHE_DIR_NAME]


def _writable(d: Path) -> bool:
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(d, os.W_OK | os.X_OK)


def _export(model: Any, out: Path) -> None:
    """Write the fp32 graph of the trunk to ``out`` atomically."""
    sample = tokenize(model.tokenizer, ["a red circle moving left", "a dog"], model.cfg.text.max_length, "cpu")
    was_training = model.text.training
    module = _Features(model.text).eval().cpu()
    B, L = torch.export.Dim("batch"), torch.export.Dim("tokens")
    shapes = {"input_ids": {0: B, 1: L}, "attention_mask": {0: B, 1: L}}
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", suffix=".onnx", dir=out.parent)
    os.close(fd)
    try:
        # the exporter reports its steps on stdout and in INFO logs, and warns about unused axis names: none of it
        # is for our users
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet("onnx_ir", "onnxscript"):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                (sample["input_ids"], sample["attention_mask"]),
                input_names=["input_ids", "attention_mask"],
                output_names=["features"],
                dynamic_shapes=shapes,
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
            )
            program.save(tmp)
        os.replace(tmp, out)
    finally:
        model.text.train(was_training)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def _quiet(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """Only records at ``level`` or above from these loggers for the duration."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, before in zip(loggers, levels, strict=True):
            lg.setLevel(before)


def _quantize(src: Path, out: Path) -> None:
    """int8 dynamic quantisation of ``src``'s MatMul weights, per channel, written to ``out`` atomically."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", suffix=".onnx", dir=out.parent)
    os.close(fd)
    try:
        with _quiet("", level=logging.ERROR):  # it warns on the root logger that the graph was not pre-processed
            kinds = ["MatMul"]  # int8 embeddings (Gather) cost accuracy and save no time
            quantize_dynamic(str(src), tmp, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=kinds)
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def graph_path(model: Any, bundle: Path | None, int8: bool) -> Path:
    """The cached graph for ``model`` (exported, and quantised for int8, when absent): bundle dir, else user cache."""
    require_onnx()
    key = graph_key(model, int8=False)
    name = f"text-trunk-{key}-fp32.onnx"
    qname = f"text-trunk-{graph_key(model, int8=True)}-int8.onnx"
    dirs = cache_dirs(bundle)
    for d in dirs:  # a graph already cached anywhere is used
        if (d / (qname if int8 else name)).is_file():
            LOG.info("text trunk: ONNX graph %s", d / (qname if int8 else name))
            return d / (qname if int8 else name)
    d = next((d for d in dirs if _writable(d)), None)
    if d is None:
        raise UserError(f"no writable directory to cache the ONNX text trunk in (tried {', '.join(map(str, dirs))})")
    if bundle is not None and d != dirs[0]:
        LOG.warning("bundle %s is read-only: the ONNX text trunk is cached in %s", bundle, d)
    fp32 = next((x / name for x in dirs if (x / name).is_file()), d / name)
    if not fp32.is_file():
        LOG.info("exporting the text trunk to ONNX: %s", fp32)
        _export(model, fp32)
    if not int8:
        return fp32
    LOG.info("quantising the ONNX text trunk to int8: %s", d / qname)
    _quantize(fp32, d / qname)
    return d / qname


class OnnxTrunk:
    """Texts -> pooled trunk features ``[N, H]`` float32 with ONNX Runtime on the CPU (thread-safe)."""

    def __init__(
        self, model: Any, bundle: Path | None, lock: threading.Lock, int8: bool = False, threads: int = 0
    ) -> None:
        """``lock``: the one guarding the model's tokenizer (a fast tokenizer is not safe from two threads)."""
        import onnxruntime as ort

        self.path = graph_path(model, bundle, int8)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()  # the cores this process serves with
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads leave the cores free
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        self.tokenizer, self.max_length = model.tokenizer, model.cfg.text.max_length
        self.feat_dim = int(model.text.feat_dim)
        self.lock = lock
        self.name = "onnx-int8" if int8 else "onnx"

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.feat_dim), np.float32)
        with self.lock:
            enc = self.tokenizer(
                list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="np"
            )
        feed = {
            "input_ids": enc["input_ids"].astype(np.int64),
            "attention_mask": enc["attention_mask"].astype(np.int64),
        }
        return np.asarray(self.session.run(None, feed)[0], dtype=np.float32)
