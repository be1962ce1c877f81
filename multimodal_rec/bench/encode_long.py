"""``mmrec bench encode --long``: encoding long videos (segments), against the decode-only ceiling, and its memory.

On a long-video world (``mmrec synth --long``; made in a temporary directory when no catalog is given) of 1, 2 and
4 videos: end-to-end videos/s and seconds of video per second (in-process ``encode_catalog``), the decode-only
throughput D of the same segment frames (``frames.read_segments``, as the encoder samples them, one process per
core), model-only M (segment clips of T frames through the video tower) and the ceiling they allow, and the peak
RSS of a fresh ``mmrec encode`` process per size: flat from 1 to 4 videos means segments stream, never pile up.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multimodal_rec.bench.encode import ceiling_of, encode_cmd, model_only, peak_rss_mb
from multimodal_rec.data.tables import read_catalog
from multimodal_rec.encoding.pipeline import default_workers, encode_catalog
from multimodal_rec.errors import UserError
from multimodal_rec.model.checkpoint import load_model
from multimodal_rec.runtime import pick_device

LOG = logging.getLogger(__name__)
SIZES = (1, 2, 4)


def read_segments(
    path: str, num_frames: int, size: int, segment_seconds: float, max_segments: int, shots: bool = False
) -> Any:
    """``frames.read_segments`` (the encoder's own segment sampling), imported when first used."""
    from multimodal_rec.data import frames

    return frames.read_segments(path, num_frames, size, segment_seconds, max_segments, shots=shots)


def _decode_one(job: tuple[str, int, int, float, int]) -> tuple[int, float]:
    """(segments, seconds of video) of one video, decoded the way the encoder decodes it."""
    _frames, spans = read_segments(*job)
    return len(spans), float(spans[-1][1]) if len(spans) else 0.0


def decode_only(
    paths: Sequence[str], num_frames: int, size: int, enc: Any, processes: int
) -> tuple[list[int], list[float], float]:
    """(segments per video, seconds per video, wall seconds) of decoding every video's segment frames."""
    jobs = [(p, num_frames, size, float(enc.segment_seconds), int(enc.max_segments), bool(enc.shots)) for p in paths]
    t = time.perf_counter()
    if processes > 1:
        with mp.get_context("fork").Pool(processes) as pool:
            res = pool.map(_decode_one, jobs, chunksize=1)
    else:
        res = [_decode_one(j) for j in jobs]
    wall = time.perf_counter() - t
    return [r[0] for r in res], [r[1] for r in res], wall


def rates(videos: int, video_seconds: float, wall_s: float) -> dict[str, float]:
    """Throughput of a run that took ``wall_s``: videos per second and seconds of video per second."""
    return {"videos_per_s": videos / wall_s, "video_seconds_per_s": video_seconds / wall_s}


def _head_catalog(cat: pd.DataFrame, n: int, path: Path) -> Path:
    """The first ``n`` videos of ``cat`` as a catalog file with absolute paths."""
    head = cat.iloc[:n].copy()
    head["path"] = head["abs_path"]
    head.drop(columns=["abs_path"]).to_csv(path, index=False)
    return path


def bench_encode_long(
    model_dir: str | Path,
    catalog: str | Path | None = None,
    sizes: Sequence[int] = SIZES,
    parts: int = 6,
    seed: int = 0,
    batch_size: int = 32,
    workers: int | None = None,
    memory: bool = True,
    device: str = "auto",
) -> dict[str, Any]:
    """Long-video encoding: E per size (videos/s, video s/s) against D, M and the ceiling; peak RSS per size."""
    sizes = sorted(set(sizes))
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        if catalog is None:
            from multimodal_rec.data.synth.long import make_long_world

            make_long_world(tmp / "world", videos=sizes[-1], parts=parts, seed=seed)
            catalog = tmp / "world" / "catalog.csv"
        cat = read_catalog(catalog)
        if len(cat) < sizes[-1]:
            raise UserError(f"the catalog has {len(cat)} videos; --long-sizes needs {sizes[-1]}")
        return _bench(model_dir, cat, sizes, tmp, batch_size, workers, memory, device)


def _bench(
    model_dir: str | Path,
    cat: pd.DataFrame,
    sizes: list[int],
    tmp: Path,
    batch_size: int,
    workers: int | None,
    memory: bool,
    device: str,
) -> dict[str, Any]:
    workers = default_workers(device) if workers is None else workers
    model, cfg = load_model(model_dir, pick_device(device))
    enc, vcfg, cores = cfg.encode, model.cfg.video, os.cpu_count() or 1
    paths = list(cat["abs_path"].iloc[: sizes[-1]])
    segs, secs, wall = decode_only(paths, vcfg.num_frames, vcfg.image_size, enc, min(cores, len(paths)))
    D = len(paths) / wall
    M_seg = model_only(model, paths, batch_size)  # segment clips of T frames per second
    M = M_seg / float(np.mean(segs))
    name, ceiling = ceiling_of(D, M, model.device.type == "cuda")
    out: dict[str, Any] = {
        "videos": len(paths),
        "video_seconds": round(sum(secs), 1),
        "segments": int(sum(segs)),
        "segment_seconds": float(enc.segment_seconds),
        "max_segments": int(enc.max_segments),
        "frames": [vcfg.num_frames, vcfg.image_size],
        "cores": cores,
        "device": str(model.device),
        "batch_size": batch_size,
        "workers": workers,
        "decode_only": {k: round(v, 3) for k, v in rates(len(paths), sum(secs), wall).items()},
        "model_only_segments_per_s": round(M_seg, 2),
        "model_only_vps": round(M, 3),
        "ceiling": name,
        "ceiling_vps": round(ceiling, 3),
        "sizes": [],
    }
    for n in sizes:
        sub = _head_catalog(cat, n, tmp / f"head{n}.csv")
        t = time.perf_counter()
        encode_catalog(model_dir, sub, tmp / f"bundle{n}", batch_size=batch_size, workers=workers, device=device,
                       rebuild=True)  # fmt: skip
        row: dict[str, Any] = {"videos": n, "video_seconds": round(sum(secs[:n]), 1)}
        row["seconds"] = round(time.perf_counter() - t, 2)
        row |= {k: round(v, 3) for k, v in rates(n, sum(secs[:n]), row["seconds"]).items()}
        row["e_over_d"] = round(row["videos_per_s"] / D, 3)
        row["e_over_ceiling"] = round(row["videos_per_s"] / ceiling, 3)
        if memory:
            cmd = [*encode_cmd(model_dir, tmp / "mem", batch_size, workers, device), "--catalog", str(sub)]
            row["peak_rss_mb"] = round(peak_rss_mb(cmd), 1)
        out["sizes"].append(row)
    if memory and len(sizes) > 1:
        out["rss_growth"] = round(out["sizes"][-1]["peak_rss_mb"] / out["sizes"][0]["peak_rss_mb"] - 1, 3)
    LOG.info("bench encode --long: %s", json.dumps(out))
    return out


def format_encode_long(r: dict[str, Any]) -> str:
    """The long-video encode benchmark as text."""
    d = r["decode_only"]
    lines = [
        f"long videos: {r['videos']} ({r['video_seconds']:.0f} s of video, {r['segments']} segments of about "
        f"{r['segment_seconds']:g} s, at most {r['max_segments']} per video), frames {r['frames'][0]} x "
        f"{r['frames'][1]} px, batch {r['batch_size']}, {r['cores']} cores, device {r['device']}, "
        f"decode workers {r['workers']}",
        f"  decode only (D)   {d['videos_per_s']:>9.3f} videos/s  {d['video_seconds_per_s']:>9.1f} s of video/s",
        f"  model only (M)    {r['model_only_vps']:>9.3f} videos/s  ({r['model_only_segments_per_s']:.1f} segments/s)",
        f"  ceiling {r['ceiling']} = {r['ceiling_vps']:.3f} videos/s",
        f"  {'videos':>8}{'video s':>9}{'wall s':>8}{'videos/s':>10}{'video s/s':>11}{'E / D':>8}{'E / ceil':>10}"
        f"{'peak RSS':>10}",
    ]
    for s in r["sizes"]:
        rss = f"{s['peak_rss_mb']:>6.0f} MiB" if "peak_rss_mb" in s else f"{'-':>10}"
        lines.append(
            f"  {s['videos']:>8}{s['video_seconds']:>9.0f}{s['seconds']:>8.1f}{s['videos_per_s']:>10.3f}"
            f"{s['video_seconds_per_s']:>11.1f}{s['e_over_d']:>8.3f}{s['e_over_ceiling']:>10.3f}{rss}"
        )
    if "rss_growth" in r:
        lines.append(f"  peak RSS growth from {r['sizes'][0]['videos']} to {r['sizes'][-1]['videos']} videos: "
                     f"{100 * r['rss_growth']:+.1f}%")  # fmt: skip
    return "\n".join(lines)
