"""Benchmarks (not tests): measured ratios in one run, on the same files, with all cores.

``bench_encode`` measures decode-only throughput D, model-only throughput M (pre-decoded frames) and
end-to-end throughput E of the catalog encoder, and the peak resident memory of encode jobs over N and
4N videos.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from multimodal_rec.data.cache import frames_to_tensor, iter_clips
from multimodal_rec.data.tables import read_catalog
from multimodal_rec.encoding.embed import inference
from multimodal_rec.encoding.pipeline import default_workers, encode_catalog
from multimodal_rec.errors import InfrastructureError, UserError
from multimodal_rec.model.checkpoint import load_model
from multimodal_rec.runtime import pick_device

LOG = logging.getLogger(__name__)


def _replicated_catalog(cat: pd.DataFrame, times: int, path: Path) -> Path:
    """The catalog ``times`` over, with distinct ids (same files): a bigger job for memory growth checks."""
    parts = [cat.assign(video_id=[f"{v}~{t}" for v in cat["video_id"]]) for t in range(times)]
    big = pd.concat(parts, ignore_index=True)
    big["path"] = big["abs_path"]
    big.drop(columns=["abs_path"]).to_csv(path, index=False)
    return path


def peak_rss_mb(cmd: list[str]) -> float:
    """Peak resident memory (MiB) of ``cmd`` and its worker processes, measured by a fresh launcher."""
    launcher = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
    )
    res = subprocess.run([sys.executable, "-c", launcher, *cmd], capture_output=True, text=True)
    if res.returncode != 0:
        raise InfrastructureError(f"encode job for the memory check failed: {res.stderr.strip().splitlines()[-1:]}")
    return int(res.stdout.strip().splitlines()[-1]) / 1024  # ru_maxrss is KiB on Linux


def _decode_only(model: Any, paths: list[str], batch_size: int) -> tuple[int, float]:
    """(clips that decode, decode-only throughput D in videos/s) with one decoding worker per core."""
    vcfg, cores = model.cfg.video, os.cpu_count() or 1
    t = time.perf_counter()
    batches = iter_clips(paths, vcfg.num_frames, vcfg.image_size, cores, batch_size)
    decoded = sum(f is not None for b in batches for _, f, _ in b)
    return decoded, len(paths) / (time.perf_counter() - t)


def model_only(model: Any, paths: list[str], batch_size: int) -> float:
    """Model-only throughput M (videos/s): one batch of pre-decoded frames run as many times as there are paths."""
    vcfg = model.cfg.video
    sample = [
        f
        for b in iter_clips(paths[: 4 * batch_size], vcfg.num_frames, vcfg.image_size, 0, batch_size)
        for _, f, _ in b
        if f is not None
    ]
    if not sample:
        raise UserError("no clip of the catalog decodes: nothing to benchmark")
    frames = frames_to_tensor(np.stack([sample[i % len(sample)] for i in range(batch_size)]))
    cuda = model.device.type == "cuda"
    with inference(model):  # the encoder's numerics, without its per-batch host copies
        model.encode_video(frames)  # warm-up
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        n = 0
        while n < len(paths):
            model.encode_video(frames)
            n += batch_size
        if cuda:
            torch.cuda.synchronize()
        return n / (time.perf_counter() - t)


def ceiling_of(D: float, M: float, cuda: bool) -> tuple[str, float]:
    """The end-to-end ceiling from decode-only ``D`` and model-only ``M`` (same unit): on a GPU decoding (CPU) and
    the model overlap on different hardware, ``min(D, M)``; on the CPU they share the cores, so the two jobs run
    back to back at full speed, ``1/(1/D + 1/M)``."""
    if cuda:
        return "min(D, M)", min(D, M)
    return "1/(1/D + 1/M)", 1 / (1 / D + 1 / M)


def encode_cmd(model_dir: str | Path, out: Path, batch_size: int, workers: int, device: str) -> list[str]:
    """``mmrec encode`` as a fresh process (for its peak memory), rebuilding ``out``; the catalog is appended."""
    return [
        sys.executable,
        "-m",
        "multimodal_rec.cli",
        "encode",
        "--model",
        str(model_dir),
        "--out",
        str(out),
        "--batch-size",
        str(batch_size),
        "--workers",
        str(workers),
        "--device",
        device,
        "--rebuild",
        "-q",
    ]


def _peak_memory(
    model_dir: str | Path, catalog: str | Path, cat: pd.DataFrame, tmp: Path, batch_size: int, workers: int, device: str
) -> dict[str, float]:
    """Peak RSS (MiB) of ``mmrec encode`` over the catalog and over 4 times it, and the growth between them."""
    base = encode_cmd(model_dir, tmp / "mem", batch_size, workers, device)
    small = peak_rss_mb([*base, "--catalog", str(catalog)])
    big = peak_rss_mb([*base, "--catalog", str(_replicated_catalog(cat, 4, tmp / "x4.csv"))])
    return {"N": round(small, 1), "4N": round(big, 1), "growth": round(big / small - 1, 3)}


def bench_encode(
    model_dir: str | Path,
    catalog: str | Path,
    batch_size: int = 32,
    workers: int | None = None,
    memory: bool = True,
    device: str = "auto",
    repeat: int = 1,
) -> dict[str, Any]:
    """Decode-only D, model-only M, end-to-end E (videos/s) and E against its ceiling; peak RSS for N and 4N.

    ``repeat`` > 1 benchmarks the catalog that many times over (distinct ids, same files): fixed costs such as
    loading the model weigh less, as in a real catalog.
    """
    if repeat > 1:
        with tempfile.TemporaryDirectory() as tmp:
            big = _replicated_catalog(read_catalog(catalog), repeat, Path(tmp) / f"x{repeat}.csv")
            return bench_encode(model_dir, big, batch_size, workers, memory, device)
    workers = default_workers(device) if workers is None else workers
    model, _ = load_model(model_dir, pick_device(device))
    cat = read_catalog(catalog)
    paths = list(cat["abs_path"])
    decoded, D = _decode_only(model, paths, batch_size)
    M = model_only(model, paths, batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        t, kw = time.perf_counter(), {"batch_size": batch_size, "workers": workers, "device": device}
        res = encode_catalog(model_dir, catalog, Path(tmp) / "bundle", rebuild=True, **kw)
        E = res.total / (time.perf_counter() - t)
        out: dict[str, Any] = {
            "videos": len(paths),
            "decoded": decoded,
            "cores": os.cpu_count() or 1,
            "device": str(model.device),
            "batch_size": batch_size,
            "workers": workers,
            "frames": [model.cfg.video.num_frames, model.cfg.video.image_size],
            "decode_only_vps": round(D, 2),
            "model_only_vps": round(M, 2),
            "end_to_end_vps": round(E, 2),
        }
        out["ceiling"], ceiling = ceiling_of(D, M, model.device.type == "cuda")
        out["ceiling_vps"] = round(ceiling, 2)
        out["e_over_ceiling"] = round(E / out["ceiling_vps"], 3)
        out["e_over_d"] = round(E / D, 3)
        if memory:
            out["peak_rss_mb"] = _peak_memory(model_dir, catalog, cat, Path(tmp), batch_size, workers, device)
    LOG.info("bench encode: %s", json.dumps(out))
    return out


def format_encode(r: dict[str, Any]) -> str:
    lines = [
        f"catalog: {r['videos']} videos, frames {r['frames'][0]} x {r['frames'][1]} px, batch {r['batch_size']}, "
        f"{r['cores']} cores, device {r['device']}, decode workers {r['workers']}",
        f"  decode only (D)   {r['decode_only_vps']:>9.1f} videos/s",
        f"  model only (M)    {r['model_only_vps']:>9.1f} videos/s",
        f"  end to end (E)    {r['end_to_end_vps']:>9.1f} videos/s",
        f"  ceiling {r['ceiling']} = {r['ceiling_vps']:.1f} videos/s;  E / ceiling = {r['e_over_ceiling']:.3f};  "
        f"E / D = {r['e_over_d']:.3f}",
    ]
    if "peak_rss_mb" in r:
        m = r["peak_rss_mb"]
        lines.append(f"  peak RSS: N = {m['N']:.0f} MiB, 4N = {m['4N']:.0f} MiB (growth {100 * m['growth']:+.1f}%)")
    return "\n".join(lines)
