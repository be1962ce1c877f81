"""The bundle a backend loads: one directory written atomically (temporary directory + rename).

``bundle.json`` (format version, model config, dims, counts, sha256 of every file), ``model.safetensors``,
``config.json``, ``tokenizer/``, ``catalog.parquet``, ``embeddings.npy``, ``index.faiss``, ``skipped.csv``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multimodal_rec.errors import UserError

LOG = logging.getLogger(__name__)
BUNDLE_FORMAT = 2  # 2: the popularity-prior column is stored as log1p(count) / PRIOR_SCALE
MANIFEST = "bundle.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_bundle(out: str | Path, fill: Callable[[Path], dict[str, Any]]) -> Path:
    """Create ``out`` atomically: ``fill(tmp_dir)`` writes the files and returns manifest fields.

    A reader sees either the previous bundle or the complete new one, never a half-written directory;
    if ``fill`` fails, the previous bundle is left untouched.
    """
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not (out / MANIFEST).is_file():
        raise UserError(f"{out} exists and is not a bundle; refusing to replace it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        fields = fill(tmp)
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        checksums = {str(p.relative_to(tmp)): sha256_file(p) for p in files}
        manifest = {"format": BUNDLE_FORMAT, **fields, "files": checksums}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_manifest(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """The bundle's manifest; with ``verify`` every file's checksum is checked (a tampered bundle is refused)."""
    path = Path(path)
    mf = path / MANIFEST
    if not mf.is_file():
        raise UserError(f"{path} is not a bundle: {MANIFEST} not found (make one with `mmrec encode`)")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{mf} is not valid JSON: {e}") from None
    if manifest.get("format") != BUNDLE_FORMAT:
        raise UserError(f"{path}: unsupported bundle format {manifest.get('format')!r} (expected {BUNDLE_FORMAT})")
    if verify:
        for name, digest in manifest.get("files", {}).items():
            f = path / name
            if not f.is_file():
                raise UserError(f"bundle {path} is incomplete: {name} is missing")
            if sha256_file(f) != digest:
                raise UserError(f"bundle {path} is corrupt or was modified: checksum mismatch for {name}")
    return manifest


def save_catalog(df: pd.DataFrame, path: Path) -> None:
    df.drop(columns=[c for c in ("abs_path",) if c in df.columns]).to_parquet(path, index=False)


def save_embeddings(xb: np.ndarray, path: Path) -> None:
    np.save(path, np.ascontiguousarray(xb, dtype=np.float32))
