"""The index past one machine: shards by video-id hash merged at search time, and export to Qdrant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from multimodal_rec import UserError
from multimodal_rec.bundle import read_manifest
from multimodal_rec.index.build import build_index, describe
from multimodal_rec.index.search import search
from multimodal_rec.index.shards import build_sharded_index, merge_shards, shard_file_names, shard_of

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_shard_of_is_stable_and_spreads_ids() -> None:
    ids = [f"v{i}" for i in range(4000)]
    a = shard_of(ids, 4)
    assert np.array_equal(shard_of(ids[::-1], 4), a[::-1])  # depends on the id only, not on the catalog order
    assert np.bincount(a, minlength=4).min() > 900  # ~1000 each
    assert shard_of(["v0", "v1", "v2"], 4).tolist() == [0, 0, 3]  # pinned: a new hash would move every video


@pytest.mark.parametrize("n_shards", [1, 3, 8])
def test_sharded_flat_equals_one_flat_index(n_shards: int) -> None:
    rng = np.random.default_rng(0)
    xb, xq = _unit(rng.normal(size=(3000, 32))), _unit(rng.normal(size=(50, 32)))
    ids = [f"v{i}" for i in range(len(xb))]
    parts = build_sharded_index(xb, ids, n_shards, "Flat")
    assert sum(p.ntotal for p in parts) == len(xb)
    sharded = merge_shards(parts)
    D, I = search(sharded, xq, 10)  # noqa: E741
    D0, I0 = search(build_index(xb, "Flat"), xq, 10)
    np.testing.assert_array_equal(I, I0)
    np.testing.assert_allclose(D, D0, rtol=0, atol=1e-6)
    assert describe(sharded)["bytes"] >= xb.nbytes


def test_sharded_bundle_loads_and_serves_the_same_hits(
    world: Path, trained: Path, bundle: Path, tmp_path: Path
) -> None:
    from multimodal_rec import Recommender
    from multimodal_rec.encoding import encode_catalog

    res = encode_catalog(trained, world / "catalog.csv", tmp_path / "b", batch_size=16, workers=0, index_shards=3)
    manifest = read_manifest(res.bundle)
    names = shard_file_names(3)
    assert manifest["index_shards"] == 3 and manifest["index_files"] == names
    assert set(names) <= set(manifest["files"]) and not (res.bundle / "index.faiss").exists()
    sharded, one = Recommender.load(res.bundle), Recommender.load(bundle)
    assert sharded.index.ntotal == len(sharded) == len(one)
    for q in ("a red circle moving left", "a blue square growing", "a white triangle moving up"):
        a, b = sharded.search(q, k=10), one.search(q, k=10)
        assert [h.video_id for h in a] == [h.video_id for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
    hist = ["a green ball moving up", "green dots rising"]
    assert [h.video_id for h in sharded.recommend(hist, k=5)] == [h.video_id for h in one.recommend(hist, k=5)]
    # filters and removals work (the selector falls back to an exact scan); changing the index is refused clearly
    color = str(one.catalog["color"].iloc[0])
    a = sharded.search("a red circle moving left", k=5, filters={"color": color})
    assert [h.video_id for h in a] == [
        h.video_id for h in one.search("a red circle moving left", k=5, filters={"color": color})
    ]
    sharded.remove_videos([a[0].video_id])
    assert a[0].video_id not in [h.video_id for h in sharded.search("a red circle moving left", k=10)]
    with pytest.raises(UserError, match="sharded bundle"):
        sharded.add_videos(one.catalog.iloc[:1].assign(video_id="new1"), embeddings=one.embeddings[:1])
    with pytest.raises(UserError, match="sharded bundle"):
        sharded.save(tmp_path / "saved")
    with (res.bundle / names[1]).open("r+b") as f:  # a modified shard file is refused like any bundle file
        f.seek(-4, 2)
        f.write(b"\0\0\0\1")
    with pytest.raises(UserError, match="checksum mismatch"):
        Recommender.load(res.bundle)


def test_more_shards_than_videos_is_refused(world: Path, trained: Path, tmp_path: Path) -> None:
    import pandas as pd

    from multimodal_rec.encoding import encode_catalog

    cat = pd.read_csv(world / "catalog.csv").head(2)
    cat["path"] = [str(world / p) for p in cat["path"]]
    cat.to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(UserError, match="index shards"):
        encode_catalog(trained, tmp_path / "c.csv", tmp_path / "b", workers=0, index_shards=3)


def test_export_to_qdrant_finds_our_top_hit(bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("qdrant_client")
    from qdrant_client import QdrantClient

    from multimodal_rec import Recommender
    from multimodal_rec.cli import main

    rec = Recommender.load(bundle)
    db = tmp_path / "qdrant"
    assert main(["export", "--to", "qdrant", "--bundle", str(bundle), "--out", str(db), "--json"]) == 0
    client = QdrantClient(path=str(db))
    try:
        assert client.count("videos").count == len(rec)
        for q in ("a red circle moving left", "a blue square growing", "a white triangle moving up"):
            xq = rec.encode_queries([q])[0]
            ours = rec.search(q, k=3, mode="vector")  # the vectors exported (the default is hybrid: titles)
            got = client.query_points("videos", query=xq.tolist(), limit=3, with_payload=True).points
            assert got[0].payload["video_id"] == ours[0].video_id
            assert got[0].score == pytest.approx(ours[0].score, abs=1e-5)
            assert set(got[0].payload) >= {"video_id", "title"}
    finally:
        client.close()


def test_export_errors_are_one_line(bundle: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import sys

    from multimodal_rec.serving.export import export_bundle

    with pytest.raises(UserError, match="exactly one of"):
        export_bundle(bundle, "qdrant")
    with pytest.raises(UserError, match="unknown export target"):
        export_bundle(bundle, "pinecone", out=tmp_path / "x")
    monkeypatch.setitem(sys.modules, "qdrant_client", None)
    with pytest.raises(UserError, match=r"\[export\]"):
        export_bundle(bundle, "qdrant", out=tmp_path / "x")
