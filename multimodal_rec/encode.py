"""Offline catalog encoding: catalog -> frames (decord, DataLoader workers) -> video tower -> bundle."""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multimodal_rec.bundle import save_catalog, save_embeddings, write_bundle
from multimodal_rec.cache import ProgressFn, _no_progress, frames_to_tensor, iter_clips
from multimodal_rec.data import read_catalog
from multimodal_rec.errors import UserError
from multimodal_rec.index import build_index
from multimodal_rec.model import MultimodalModel, load_model, save_model, to_numpy
from multimodal_rec.train import pick_device

LOG = logging.getLogger(__name__)


@dataclass
class EncodeResult:
    bundle: Path
    encoded: int
    skipped: list[dict[str, str]]
    seconds: float


def encode_frames(
    model: MultimodalModel,
    paths: list[str],
    batch_size: int = 32,
    workers: int = 1,
    progress: ProgressFn = _no_progress,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Embeddings ``[n_ok, D]``, a bool ``[N]`` of clips that decoded, and the error of every clip (or "")."""
    vcfg = model.cfg.video
    errors = [""] * len(paths)
    ok = np.zeros(len(paths), dtype=bool)
    chunks: list[np.ndarray] = []
    use_amp = model.device.type == "cuda"
    batches = iter_clips(paths, vcfg.num_frames, vcfg.image_size, workers, batch_size)
    bar = progress(batches, total=(len(paths) + batch_size - 1) // batch_size, desc="encode videos", unit="batch")
    with torch.inference_mode(), torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=use_amp):
        for batch in bar:
            good = [(i, f) for i, f, _ in batch if f is not None]
            for i, f, err in batch:
                if f is None:
                    errors[i] = err
                    LOG.warning("skipped: %s", err)
            if not good:
                continue
            frames = frames_to_tensor(np.stack([f for _, f in good]))
            chunks.append(to_numpy(model.encode_video(frames)))
            ok[[i for i, _ in good]] = True
    D = model.cfg.embed_dim
    return (np.concatenate(chunks) if chunks else np.zeros((0, D), np.float32)), ok, errors


def encode_catalog(
    model_dir: str | Path,
    catalog: str | Path,
    out: str | Path,
    batch_size: int = 32,
    workers: int = 1,
    device: str = "auto",
    progress: ProgressFn = _no_progress,
) -> EncodeResult:
    """Encode every video of ``catalog`` with the trained model in ``model_dir`` into the bundle ``out``.

    Unreadable videos are skipped and listed in the bundle's ``skipped.csv``; the job fails only when
    nothing could be encoded.
    """
    t0 = time.time()
    model, cfg = load_model(model_dir, pick_device(device))
    cat = read_catalog(catalog)
    xb, ok, errors = encode_frames(model, list(cat["abs_path"]), batch_size, workers, progress)
    skipped = [
        {"video_id": v, "path": p, "reason": e}
        for v, p, e, good in zip(cat["video_id"], cat["path"], errors, ok, strict=True)
        if not good
    ]
    if not ok.any():
        raise UserError(
            f"no video of {catalog} could be encoded ({len(skipped)} skipped; first: {skipped[0]['reason']})"
        )
    encoded = cat[ok].reset_index(drop=True)

    def fill(tmp: Path) -> dict[str, Any]:
        import faiss

        save_model(model, cfg, tmp)
        model.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        save_catalog(encoded, tmp / "catalog.parquet")
        save_embeddings(xb, tmp / "embeddings.npy")
        faiss.write_index(build_index(xb, cfg.index.factory), str(tmp / "index.faiss"))
        with (tmp / "skipped.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["video_id", "path", "reason"])
            w.writeheader()
            w.writerows(skipped)
        return {
            "model": cfg.to_dict(),
            "embed_dim": int(xb.shape[1]),
            "count": int(xb.shape[0]),
            "skipped": len(skipped),
            "index": cfg.index.factory,
            "catalog_source": str(Path(catalog).resolve()),
        }

    path = write_bundle(out, fill)
    LOG.info("encoded %d videos, skipped %d -> %s", int(ok.sum()), len(skipped), path)
    return EncodeResult(path, int(ok.sum()), skipped, time.time() - t0)
