"""``mmrec bench grow``: a large bundle for serving benchmarks, made from a real one (not a test, not for users).

Serving a 1M-video catalog cannot be measured on a catalog that fits in a demo, and encoding a million videos to
get one is not a benchmark's job. :func:`grow_bundle` copies a bundle's model, tokenizer and videos, then adds
synthetic videos up to the size asked for: each is a real video's vector moved by Gaussian noise of norm about
``noise`` and normalised again (so the vectors keep the real catalog's clusters: an index is as hard to search as on
real embeddings of that spread, not easier, as uniform random vectors would be), with that video's metadata, its
``video_id`` made unique (``<id>~<n>``). The index is built with the default factory for the new size
(:func:`~multimodal_rec.index.build.choose_factory`), exactly as ``mmrec encode`` would. Per-video content and text
vectors and segments are not carried (they are optional in a bundle); the stored item-text features are, so a
history of catalog titles still needs no trunk pass.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multimodal_rec.errors import UserError

LOG = logging.getLogger(__name__)
CHUNK = 65_536  # synthetic vectors made per step (bounded memory at any size)


def synthetic_rows(embeddings: np.ndarray, n: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors near randomly chosen rows of ``embeddings`` (each moved by noise of expected norm ``noise``)
    and the row each was made from."""
    rng = np.random.default_rng(seed)
    n0, d = embeddings.shape
    base = rng.integers(0, n0, size=n)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, CHUNK):
        rows = base[s : s + CHUNK]
        x = np.asarray(embeddings[rows], np.float32) + rng.standard_normal((len(rows), d), np.float32) * (
            noise / np.sqrt(d)
        )
        out[s : s + CHUNK] = x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
    return out, base


def grow_bundle(
    bundle: str | Path, out: str | Path, videos: int, noise: float = 0.5, seed: int = 0, factory: str = "auto"
) -> dict[str, Any]:
    """Write to ``out`` a copy of ``bundle`` grown to ``videos`` videos (see the module docstring); what was made."""
    from multimodal_rec.bundle import INDEX_FILE, Bundle, load_bundle, save_bundle
    from multimodal_rec.index.build import build_index, choose_factory
    from multimodal_rec.model.prior import index_vectors

    if noise < 0:
        raise UserError(f"noise must be >= 0, got {noise}")
    out = Path(out)
    if out.exists():
        raise UserError(f"{out} exists: grow writes a new bundle (remove it or choose another --out)")
    src = load_bundle(bundle, mmap=True)
    n0 = len(src.catalog)
    if videos <= n0:
        raise UserError(f"--videos {videos} is not more than the bundle's {n0} videos")
    t0 = time.perf_counter()
    extra, base = synthetic_rows(src.embeddings, videos - n0, noise, seed)
    embeddings = np.concatenate([np.asarray(src.embeddings, np.float32), extra])
    del extra
    copies = src.catalog.iloc[base].reset_index(drop=True)
    copies["video_id"] = [f"{v}~{i}" for i, v in enumerate(copies["video_id"].astype(str))]
    catalog = pd.concat([src.catalog, copies], ignore_index=True)
    cosine = float(np.median((embeddings[n0:][:10_000] * np.asarray(src.embeddings)[base[:10_000]]).sum(1)))
    LOG.info(
        "grow: %d synthetic videos made in %.1f s (median cosine to their source %.3f)",
        len(copies),
        time.perf_counter() - t0,
        cosine,
    )
    popularity_prior = bool(src.cfg.model.popularity_prior)
    xb = index_vectors(embeddings, catalog, popularity_prior)
    if factory == "auto":  # recorded as what was chosen for this size, as mmrec encode does
        factory = choose_factory(*xb.shape)
    t1 = time.perf_counter()
    LOG.info("grow: building the %s index over %d vectors", factory, len(xb))
    index = build_index(xb, factory, seed=seed)
    del xb
    build_s = time.perf_counter() - t1
    fields = {k: v for k, v in src.fields.items() if k not in ("count", "skipped", "segments")}
    fields["index"] = factory
    fields["grown_from"] = {"bundle": str(bundle), "videos": n0, "noise": noise, "seed": seed}
    grown = Bundle(
        src.model,
        src.cfg,
        catalog,
        embeddings,
        sources=src.sources,
        indexes={INDEX_FILE: index},
        fields=fields,
        text_features=src.text_features,
        text_feature_keys=src.text_feature_keys,
    )
    save_bundle(out, grown)
    return {
        "bundle": str(out),
        "videos": videos,
        "real_videos": n0,
        "index": fields["index"],
        "index_build_s": round(build_s, 1),
        "median_cosine_to_source": round(cosine, 3),
        "seconds": round(time.perf_counter() - t0, 1),
    }
