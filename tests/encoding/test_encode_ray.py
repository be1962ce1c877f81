"""The Ray engine: same bundle as the local engine (bad files skipped, resumable by shard), on a local 2-CPU Ray."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_encode import StopAfter, assert_own_embeddings

from multimodal_rec import UserError
from multimodal_rec.encoding import encode_catalog
from multimodal_rec.encoding.job import plan_encode
from multimodal_rec.encoding.local import run_local


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module (startup costs seconds); skipped when the [distributed] extra is missing."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    kw = {"num_cpus": 2, "include_dashboard": False, "object_store_memory": 200 * 1024**2, "log_to_driver": False}
    try:
        ray.init(**kw)
    except Exception:  # Ray gives its raylet 30 s to register: a machine saturated by other jobs can miss that
        ray.shutdown()
        ray.init(**kw)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def mixed_catalog(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twenty good clips with a missing file and a text file among them."""
    d = tmp_path_factory.mktemp("ray_cat")
    cat = pd.read_csv(world / "catalog.csv").head(20)
    cat["path"] = [str(world / p) for p in cat["path"]]
    (d / "notes.mp4").write_text("not a video\n" * 20)
    bad = pd.DataFrame({"video_id": ["gone", "text"], "path": [str(d / "gone.mp4"), str(d / "notes.mp4")]})
    mixed = pd.concat([cat.iloc[:7], bad.iloc[:1], cat.iloc[7:15], bad.iloc[1:], cat.iloc[15:]], ignore_index=True)
    mixed.to_csv(d / "catalog.csv", index=False)
    return d / "catalog.csv"


def test_ray_engine_gives_the_local_bundle(ray_session, trained: Path, mixed_catalog: Path, tmp_path: Path) -> None:
    kw = {"batch_size": 4, "shard_size": 8}
    local = encode_catalog(trained, mixed_catalog, tmp_path / "local", workers=0, **kw)
    dist = encode_catalog(trained, mixed_catalog, tmp_path / "ray", engine="ray", **kw)
    assert (dist.total, dist.encoded, len(dist.skipped)) == (local.total, local.encoded, 2) == (20, 20, 2)
    np.testing.assert_array_equal(np.load(dist.bundle / "embeddings.npy"), np.load(local.bundle / "embeddings.npy"))
    pd.testing.assert_frame_equal(
        pd.read_parquet(dist.bundle / "catalog.parquet"), pd.read_parquet(local.bundle / "catalog.parquet")
    )
    skipped = pd.read_csv(dist.bundle / "skipped.csv")
    assert list(skipped["video_id"]) == ["gone", "text"]
    assert skipped.equals(pd.read_csv(local.bundle / "skipped.csv"))
    assert not (tmp_path / ".ray.work").exists()
    cat = pd.read_csv(mixed_catalog)
    good = {v: p for v, p in zip(cat["video_id"], cat["path"], strict=True) if v not in ("gone", "text")}
    assert_own_embeddings(dist.bundle, trained, good)  # not a neighbour's: the row after a skipped clip is its own


def test_cli_ray_engine_with_index_shards(ray_session, trained: Path, mixed_catalog: Path, tmp_path: Path) -> None:
    from multimodal_rec.bundle import read_manifest
    from multimodal_rec.cli import main

    out = tmp_path / "b"
    argv = ["encode", "--model", str(trained), "--catalog", str(mixed_catalog), "--out", str(out), "--json"]
    assert main([*argv, "--engine", "ray", "--index-shards", "2", "--batch-size", "4"]) == 0
    local = encode_catalog(trained, mixed_catalog, tmp_path / "local", batch_size=4, workers=0)
    np.testing.assert_array_equal(np.load(out / "embeddings.npy"), np.load(local.bundle / "embeddings.npy"))
    assert read_manifest(out)["index_shards"] == 2


def test_ray_engine_resumes_from_shards(ray_session, trained: Path, mixed_catalog: Path, tmp_path: Path) -> None:
    kw = {"batch_size": 4, "shard_size": 8}
    ref = encode_catalog(trained, mixed_catalog, tmp_path / "ref", workers=0, **kw)
    job = plan_encode(trained, mixed_catalog, tmp_path / "b", **kw)
    with pytest.raises(KeyboardInterrupt):
        run_local(job, workers=0, progress=StopAfter(9))  # stops inside shard 1: shard 0 is complete
    res = encode_catalog(trained, mixed_catalog, tmp_path / "b", engine="ray", **kw)
    assert (res.resumed, res.encoded, len(res.skipped)) == (8, 13, 2)  # shard 0: 7 clips + the missing file
    np.testing.assert_array_equal(np.load(res.bundle / "embeddings.npy"), np.load(ref.bundle / "embeddings.npy"))


def test_missing_ray_is_a_one_line_error(monkeypatch, trained: Path, world: Path, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(UserError, match=r"\[distributed\]") as e:
        encode_catalog(trained, world / "catalog.csv", tmp_path / "b", engine="ray")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="unknown encode engine"):
        encode_catalog(trained, world / "catalog.csv", tmp_path / "b", engine="spark")


def test_ray_engine_with_long_videos_and_text_gives_the_local_bundle(
    ray_session, trained: Path, world: Path, tmp_path: Path
) -> None:
    """Segments, spans and text vectors go through the same per-batch function (embed_batch) on Ray actors."""
    from long_video import make_long_video

    make_long_video(tmp_path / "long.mp4", seed=4)
    cat = pd.read_csv(world / "catalog.csv").head(5)[["video_id", "path", "title"]]
    cat["path"] = [str(world / p) for p in cat["path"]]
    extra = pd.DataFrame(
        {"video_id": ["long", "textonly"], "path": [str(tmp_path / "long.mp4"), ""], "title": ["Long one", "Words"]}
    )
    pd.concat([cat.iloc[:2], extra, cat.iloc[2:]], ignore_index=True).to_csv(tmp_path / "c.csv", index=False)
    kw = {"batch_size": 2, "shard_size": 4, "encode": {"segment_seconds": 3.3}}
    local = encode_catalog(trained, tmp_path / "c.csv", tmp_path / "local", workers=0, **kw)
    dist = encode_catalog(trained, tmp_path / "c.csv", tmp_path / "ray", engine="ray", **kw)
    for name in ("content", "segment_content"):  # the video tower: bit for bit, as for short clips
        np.testing.assert_array_equal(np.load(dist.bundle / f"{name}.npy"), np.load(local.bundle / f"{name}.npy"))
    for name in ("text", "embeddings", "segment_embeddings"):  # the text trunk runs on another thread count there
        np.testing.assert_allclose(
            np.load(dist.bundle / f"{name}.npy"), np.load(local.bundle / f"{name}.npy"), atol=1e-6
        )
    segs = pd.read_parquet(dist.bundle / "segments.parquet")
    pd.testing.assert_frame_equal(segs, pd.read_parquet(local.bundle / "segments.parquet"))
    assert (segs["video_id"] == "long").sum() == 3 and dist.total == 7
