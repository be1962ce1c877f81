"""The text trunk (transformer + pooling) on ONNX Runtime: exported from the served model on first use, cached.

``torch.onnx.export`` (the dynamo exporter, dynamic batch and sequence axes) writes the graph of
``TextTower.forward_features``: token ids + mask ``[B, L]`` -> pooled features ``[B, H]``; the projection head and
the user tower stay in torch (they are small and run on these features). ``onnx-int8`` quantises the MatMul weights
to 8 bits in blocks of the input dimension and multiplies in int8 with activations quantised per row and block
(``MatMulNBits``, ``accuracy_level=4``). Not ``quantize_dynamic``: its one activation scale per tensor moved query
vectors of the demo bundle's MiniLM by up to 0.11 in cosine (the projection head amplifies trunk errors); the blocks
keep them within 0.005, for a little less speed (a query in ~0.7x the fp32 graph's time, against ~0.55x). Every int8
graph is checked against the fp32 one when written (:func:`_quantize`).

The graph is never downloaded: it is built from the loaded weights and cached in ``<bundle>/onnx/`` (or, when the
bundle directory is read-only, in ``$MMREC_CACHE_DIR`` / ``$XDG_CACHE_HOME/multimodal_rec`` / ``~/.cache/...``),
under a key that hashes the trunk's weights, its pooling, the precision and this exporter's version (for int8 also the
int8 recipe and the onnxruntime version), so a stale graph is never used. Written atomically (temporary file +
rename), so worker processes exporting at once are safe.
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
from collections.abc import Callable, Iterator, Sequence
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
INT8_RECIPE = 2  # bump when the int8 recipe changes: every cached int8 graph is then rebuilt
BLOCKS = (64, 32, 16)  # int8 block sizes tried in turn: coarser blocks run faster, finer ones are more exact
AGREEMENT = 0.995  # the least cosine of int8 query vectors to fp32's on CHECK_TEXTS, or the next recipe is tried
CHECK_TEXTS = (  # generic English queries the int8 graph is checked on when written (nothing of any one catalog)
    "a man walking his dog in the rain",
    "How do I cook rice without a rice cooker?",
    "the best goals of the year",
    "She said the train was late again.",
    "video of a cat sleeping on a sofa",
    "quarterly earnings report",
    "hello",
    "red car driving fast on a mountain road at night",
    "A child is drawing with crayons at the kitchen table.",
    "music video with dancing",
    "tutorial: replacing a bike chain",
    "why do leaves change colour in autumn",
    "breaking news from the parliament",
    "slow jazz for a rainy evening",
    "two people arguing in a crowded market",
    "aerial view of a city at dawn",
)
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
    if int8:  # which recipe passes the check depends on the recipe and on what this onnxruntime can run
        import onnxruntime

        h.update(f"|{INT8_RECIPE}|{onnxruntime.__version__}".encode())
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


def _blockwise(block: int) -> Callable[[Path, Path], None]:
    """8-bit weights in blocks of ``block`` input rows, int8 products with activations quantised per row and block."""

    def write(src: Path, dst: Path) -> None:
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )

        cfg = DefaultWeightOnlyQuantConfig(
            block_size=block, is_symmetric=True, accuracy_level=4, bits=8, op_types_to_quantize=("MatMul",)
        )
        q = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=cfg)
        q.process()
        q.model.save_model_to_file(str(dst), False)

    return write


def _per_tensor(src: Path, dst: Path) -> None:
    """The recipe before (int8 weights per channel, one uint8 activation scale per tensor): last resort."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    kinds = ["MatMul"]  # int8 embeddings (Gather) cost accuracy and save no time
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=kinds)


def _recipes() -> list[tuple[str, Callable[[Path, Path], None]]]:
    """int8 recipes, fastest first."""
    return [*((f"int8 blocks of {b}", _blockwise(b)) for b in BLOCKS), ("int8 per tensor", _per_tensor)]


def _check_vectors(model: Any, path: Path) -> np.ndarray:
    """Unit query vectors ``[N, D]`` of CHECK_TEXTS through the graph at ``path`` and the model's head, one text at a
    time (as queries are served)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feats = []
    for text in CHECK_TEXTS:
        enc = model.tokenizer([text], truncation=True, max_length=model.cfg.text.max_length, return_tensors="np")
        feed = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
        feats.append(session.run(None, feed)[0])
    with torch.inference_mode():
        xq = model.text.forward_head(torch.from_numpy(np.concatenate(feats)).to(model.device)).float().cpu().numpy()
    return xq / np.maximum(np.linalg.norm(xq, axis=1, keepdims=True), 1e-12)


def _quantize(model: Any, src: Path, out: Path) -> None:
    """The int8 graph of ``src``, written to ``out`` atomically: the first of :func:`_recipes` whose query vectors
    on CHECK_TEXTS all keep cosine >= AGREEMENT to the fp32 graph's, else the most faithful one (with a warning)."""
    ref = _check_vectors(model, src)
    tmps: list[str] = []
    best: tuple[float, str, str] | None = None  # (least cosine, recipe, temporary file)
    try:
        for name, write in _recipes():
            fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", suffix=".onnx", dir=out.parent)
            os.close(fd)
            tmps.append(tmp)
            try:
                with _quiet("", level=logging.ERROR):  # it warns on the root logger about pre-processing
                    write(src, Path(tmp))
                agree = float((_check_vectors(model, Path(tmp)) * ref).sum(1).min())
            except Exception as e:  # an onnxruntime without this op, or without its kernel on this CPU
                LOG.info("text trunk: %s unavailable here (%s)", name, (str(e).splitlines() or [repr(e)])[0][:200])
                continue
            LOG.info("text trunk: %s, query vectors cosine >= %.4f to fp32's", name, agree)
            best = max(best or (agree, name, tmp), (agree, name, tmp))
            if agree >= AGREEMENT:
                break
        if best is None:
            raise UserError("this onnxruntime cannot quantise the text trunk to int8: use the onnx text backend")
        if best[0] < AGREEMENT:
            LOG.warning("int8 text trunk (%s): query vectors only cosine >= %.3f to fp32's", best[1], best[0])
        os.replace(best[2], out)
    finally:
        for tmp in tmps:
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
    _quantize(model, fp32, d / qname)
    return d / qname


class OnnxTrunk:
    """Texts -> pooled trunk features ``[N, H]`` float32 with ONNX Runtime on the CPU (thread-safe)."""

    def __init__(
        self, model: Any, bundle: Path | None, lock: threading.Lock, int8: bool = False, threads: int = 0
    ) -> None:
        """``lock``: the one guarding the model's tokenizer (a fast tokenizer is not safe from two threads)."""
        self.path = graph_path(model, bundle, int8)
        self.reopen(threads or torch.get_num_threads())  # the cores this process serves with
        self.tokenizer, self.max_length = model.tokenizer, model.cfg.text.max_length
        self.feat_dim = int(model.text.feat_dim)
        self.lock = lock
        self.name = "onnx-int8" if int8 else "onnx"

    def reopen(self, threads: int) -> None:
        """A new session with ``threads`` intra-op threads (its pool starts with it: a forked worker reopens)."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads leave the cores free
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])

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
