"""The bundle's integrity guarantees: a modified or incomplete bundle is refused as a whole, on every way in.

Every file listed in ``bundle.json`` must be present and hash to its recorded sha256 over its *whole* length:
``Recommender.load``, ``read_manifest(verify=True)`` and ``mmrec search --bundle`` all refuse otherwise, with a
one-line error naming the file (the CLI exits 2).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from multimodal_rec import Recommender, UserError
from multimodal_rec.bundle import read_manifest

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
EXTRA_ROWS = 12_000  # 32-d float32 rows: embeddings.npy and index.faiss both end up well past 1 MiB


@pytest.fixture(scope="module")
def big_bundle(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle plus 12k random unit rows (given as embeddings, so nothing is decoded): files over 1 MiB."""
    rec = Recommender.load(bundle)
    D = rec.embeddings.shape[1]
    xb = np.random.default_rng(0).normal(size=(EXTRA_ROWS, D)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    rec.add_videos(pd.DataFrame({"video_id": [f"x{i:05d}" for i in range(EXTRA_ROWS)]}), embeddings=xb)
    out = rec.save(tmp_path_factory.mktemp("big") / "bundle")
    for name in ("embeddings.npy", "index.faiss"):
        assert (out / name).stat().st_size > MiB + 4096, name
    return out


def _copy(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / "bundle"))


def _flip_byte(f: Path, offset: int) -> None:
    with f.open("r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0xFF]))


def _cli_search(bundle: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "multimodal_rec.cli", "search", "--quiet", "--bundle", str(bundle), "red circle"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def _assert_refused(load: Callable[[], object], *words: str) -> None:
    """``load()`` raises a one-line UserError containing every word (the file's name among them)."""
    with pytest.raises(UserError) as e:
        load()
    assert all(w in str(e.value) for w in words) and "\n" not in str(e.value), str(e.value)


def _assert_one_line_error(res: subprocess.CompletedProcess[str], *words: str) -> None:
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmrec search: error:"), res.stderr  # no traceback
    assert all(w in lines[0] for w in words), lines[0]
    assert res.stdout == ""


def test_intact_big_bundle_loads(big_bundle: Path) -> None:
    """The control: the >1 MiB bundle itself is valid, so the refusals below are caused by the modification."""
    assert read_manifest(big_bundle, verify=True)["count"] == 48 + EXTRA_ROWS
    assert len(Recommender.load(big_bundle)) == 48 + EXTRA_ROWS


@pytest.mark.parametrize("name", ["embeddings.npy", "index.faiss"])
def test_byte_flipped_past_the_first_mib_is_refused(big_bundle: Path, tmp_path: Path, name: str) -> None:
    """A checksum over the first MiB only would let this through: the flipped byte lies in the vectors past it."""
    b = _copy(big_bundle, tmp_path)
    size = (b / name).stat().st_size
    _flip_byte(b / name, MiB + (size - MiB) // 2)
    _assert_refused(lambda: read_manifest(b, verify=True), "checksum", name)
    _assert_refused(lambda: Recommender.load(b), "checksum", name)
    if name == "embeddings.npy":  # one CLI run is enough: the CLI loads through the same path
        _assert_one_line_error(_cli_search(b), "checksum", name)


@pytest.mark.parametrize("name", ["sources.parquet", "tokenizer/tokenizer_config.json", "index.faiss"])
def test_listed_file_missing_is_refused(bundle: Path, tmp_path: Path, name: str) -> None:
    """A half-copied bundle is never served: each file bundle.json lists must exist, even one the loader could
    do without (sources.parquet only matters for incremental encoding)."""
    b = _copy(bundle, tmp_path)
    assert name in read_manifest(b, verify=True)["files"]
    (b / name).unlink()
    _assert_refused(lambda: read_manifest(b, verify=True), "missing", name)
    _assert_refused(lambda: Recommender.load(b), "missing", name)
    if name == "sources.parquet":
        _assert_one_line_error(_cli_search(b), "missing", name)


@pytest.fixture(scope="module")
def segment_bundle(trained: Path, world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle with every optional file: titled short clips and a long video cut into three segments."""
    from long_video import make_long_video

    from multimodal_rec.encoding import encode_catalog

    d = tmp_path_factory.mktemp("segment_bundle")
    make_long_video(d / "long.mp4")
    cat = pd.read_csv(world / "catalog.csv").head(4)[["video_id", "path", "title"]]
    cat["path"] = [str(world / p) for p in cat["path"]]
    long = pd.DataFrame({"video_id": ["long"], "path": [str(d / "long.mp4")], "title": ["Three parts"]})
    pd.concat([cat, long], ignore_index=True).to_csv(d / "c.csv", index=False)
    return encode_catalog(trained, d / "c.csv", d / "b", workers=0, encode={"segment_seconds": 3.3}).bundle


OPTIONAL = ["content.npy", "text.npy", "segments.parquet", "segment_embeddings.npy", "segment_content.npy"]


@pytest.mark.parametrize("name", [*OPTIONAL, "segments.faiss"])
def test_optional_files_are_checksummed_like_the_others(segment_bundle: Path, tmp_path: Path, name: str) -> None:
    from multimodal_rec.bundle import load_bundle

    b = _copy(segment_bundle, tmp_path)
    assert name in read_manifest(b, verify=True)["files"]
    _flip_byte(b / name, (b / name).stat().st_size - 3)
    _assert_refused(lambda: load_bundle(b), "checksum", name)
    (b / name).unlink()
    _assert_refused(lambda: load_bundle(b), "missing", name)


def test_optional_parts_survive_a_load_and_save(segment_bundle: Path, tmp_path: Path) -> None:
    """``Recommender.save`` writes what ``load_bundle`` read: the segment level and the text vectors included."""
    from multimodal_rec.bundle import Bundle, load_bundle, save_bundle

    a = load_bundle(segment_bundle)
    assert a.segments["row"].tolist() == [0, 1, 2, 3, 4, 4, 4] and a.fields["segments"] == 7
    copy = Bundle(a.model, a.cfg, a.catalog, a.embeddings, a.sources, a.skipped, a.indexes, a.fields)
    for f in ("content", "text", "segments", "segment_embeddings", "segment_index", "segment_content"):
        setattr(copy, f, getattr(a, f))
    b = load_bundle(save_bundle(tmp_path / "again", copy))
    for f in ("content", "text", "segment_embeddings", "segment_content"):
        np.testing.assert_array_equal(getattr(b, f), getattr(a, f), err_msg=f)
    pd.testing.assert_frame_equal(b.segments, a.segments)
    assert b.segment_index.ntotal == 7 and b.manifest["encode"] == a.manifest["encode"]
    assert "duration_s" in pd.read_parquet(tmp_path / "again" / "sources.parquet").columns
