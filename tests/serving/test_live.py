"""LiveCatalog (issue 19): durable adds / removes over a bundle, replay on open, snapshots, disk trouble."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from multimodal_rec.bundle import read_manifest
from multimodal_rec.errors import UserError
from multimodal_rec.serving.live import LiveCatalog, check_video_id
from multimodal_rec.serving.wal import read_log, wal_path


@pytest.fixture
def copy(bundle: Path, tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(bundle, out)
    return out


def _video(live: LiveCatalog, vid: str, seed: int = 0) -> dict:
    d = int(live.rec.embeddings.shape[1])
    emb = np.random.default_rng(seed).standard_normal(d).tolist()
    return {"video_id": vid, "embedding": emb, "metadata": {"title": f"Clip {vid}"}}


def _state(live: LiveCatalog) -> dict[str, np.ndarray]:
    return {v: np.asarray(live.rec.embeddings[r]) for v, r in live.rec.row_of.items()}


def test_writes_survive_reopen_and_snapshot(copy: Path) -> None:
    live = LiveCatalog.open(copy)
    first = next(iter(live.rec.row_of))
    res = live.add([_video(live, "new1", 1), _video(live, "new2", 2), _video(live, first)])
    assert res.added == ["new1", "new2"] and [s["video_id"] for s in res.skipped] == [first]
    assert live.remove(["new2", first]) == 2
    before = _state(live)
    assert live.rec.search("Clip new1", k=1, mode="lexical")[0].video_id == "new1"
    live.close()  # as a crash would: no snapshot

    live = LiveCatalog.open(copy)  # the log replayed over the bundle
    after = _state(live)
    assert after.keys() == before.keys() and all(np.allclose(after[k], before[k]) for k in before)
    live.snapshot()
    assert read_log(wal_path(copy)) == (2, []) and read_manifest(copy)["wal_seq"] == 2
    live.add([_video(live, "new3", 3)])
    live.close()

    live = LiveCatalog.open(copy)  # a snapshot + one record
    assert set(_state(live)) == set(before) | {"new3"}
    live.close()


def test_replay_after_a_snapshot_the_log_kept_is_idempotent(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash between the snapshot's rename and the log's truncation: the records it holds are not applied twice."""
    live = LiveCatalog.open(copy)
    live.add([_video(live, "a", 1)])
    live.remove(["a"])
    live.add([_video(live, "a", 2)])  # re-added: a replay of all three over the snapshot would fail or double
    want = _state(live)
    monkeypatch.setattr(live.wal, "restart", lambda base: None)  # "crashes" before truncating
    live.snapshot()
    live.close()
    assert len(read_log(wal_path(copy))[1]) == 3
    live = LiveCatalog.open(copy)
    assert set(_state(live)) == set(want) and np.allclose(_state(live)["a"], want["a"])
    live.close()


def test_failing_snapshot_leaves_the_bundle_and_the_log(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Disk trouble during a snapshot (an OSError writing the embeddings): the previous bundle stays intact and
    verifies, the log still holds every write, one clear error."""
    live = LiveCatalog.open(copy)
    live.add([_video(live, "x1", 1)])
    files = read_manifest(copy)["files"]

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        live.snapshot()
    monkeypatch.undo()
    assert read_manifest(copy, verify=True)["files"] == files  # untouched, checksums pass
    assert len(read_log(wal_path(copy))[1]) == 1 and "x1" in live.rec.row_of
    assert not list(copy.parent.glob(".bundle.tmp-*"))
    live.close()
    live = LiveCatalog.open(copy)
    assert "x1" in live.rec.row_of
    live.close()


def test_bad_writes_change_nothing(copy: Path) -> None:
    live = LiveCatalog.open(copy)
    n, d = len(live.rec), int(live.rec.embeddings.shape[1])
    bad = [
        {"video_id": "n", "embedding": [float("nan")] * d},
        {"video_id": "n", "embedding": [float("inf")] + [0.0] * (d - 1)},
        {"video_id": "n", "embedding": [0.1] * (d + 1)},
        {"video_id": "n", "embedding": [0.0] * d},
        {"video_id": "a/b", "embedding": [0.1] * d},
        {"video_id": "a\nb", "embedding": [0.1] * d},
        {"video_id": "n", "embedding": [0.1] * d, "metadata": {"no_such_column": 1}},
        {"video_id": "n", "embedding": None},
    ]
    for v in bad:
        with pytest.raises(UserError):
            live.add([v])
    with pytest.raises(UserError, match="repeat"):
        live.add([_video(live, "n"), _video(live, "n")])
    with pytest.raises(UserError, match="no such video"):
        live.remove(["nope"])
    assert len(live.rec) == n and read_log(wal_path(copy))[1] == []
    live.close()


def test_one_writer_per_bundle(copy: Path) -> None:
    live = LiveCatalog.open(copy)
    with pytest.raises(UserError, match="another process"):
        LiveCatalog.open(copy)
    live.close()
    LiveCatalog.open(copy).close()


def test_interrupted_bundle_replacement_is_recovered(copy: Path) -> None:
    """A crash between write_bundle's two renames leaves no bundle at its path: the set-aside version returns."""
    live = LiveCatalog.open(copy)
    live.add([_video(live, "k1", 1)])
    live.close()
    aside = copy.with_name(f".{copy.name}.old-12345")
    copy.rename(aside)
    live = LiveCatalog.open(copy)
    assert "k1" in live.rec.row_of and not aside.exists()
    live.close()


@pytest.mark.parametrize("vid", ["", " ", "a/b", "a\\b", "..", "a\x00", "x" * 201, 3])
def test_video_ids_that_are_refused(vid) -> None:
    with pytest.raises(UserError):
        check_video_id(vid)


def test_add_by_path_encodes_logs_the_vector_and_replays(copy: Path, world: Path) -> None:
    """A video given by path is decoded and encoded as mmrec encode made the bundle; the log holds its vector, so
    a reopen serves the same vector without decoding; an unreadable path is skipped with its reason, not logged."""
    import pandas as pd

    cat = pd.read_csv(world / "catalog.csv")
    clip = str(world / cat["path"][0])
    live = LiveCatalog.open(copy)
    res = live.add(
        [
            {"video_id": "by_path", "path": clip, "metadata": {"title": str(cat["title"][0])}},
            {"video_id": "broken", "path": str(copy / "no-such.mp4"), "metadata": {}},
        ]
    )
    assert res.added == ["by_path"] and [s["video_id"] for s in res.skipped] == ["broken"]
    vec = np.asarray(live.rec.embeddings[live.rec.row_of["by_path"]])
    same = np.asarray(live.rec.embeddings[live.rec.row_of[str(cat["video_id"][0])]])  # the clip, by mmrec encode
    np.testing.assert_allclose(vec, same, atol=1e-5)
    records = read_log(wal_path(copy))[1]
    assert len(records) == 1 and [v["video_id"] for v in records[0]["videos"]] == ["by_path"]
    np.testing.assert_allclose(records[0]["videos"][0]["embedding"], vec, atol=1e-6)
    live.close()
    live = LiveCatalog.open(copy)
    np.testing.assert_allclose(np.asarray(live.rec.embeddings[live.rec.row_of["by_path"]]), vec, atol=1e-6)
    with pytest.raises(UserError, match="needs an embedding or a path"):
        live.add([{"video_id": "both", "path": clip, "embedding": vec.tolist()}])
    live.close()


@pytest.mark.parametrize("how", ["save", "encode"])
def test_a_full_disk_during_save_or_encode_leaves_the_bundle(
    how: str, copy: Path, trained: Path, world: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Disk trouble (issue 19) while ``Recommender.save`` or ``mmrec encode`` replaces a bundle: the previous version
    still verifies, and the CLI says so in one line (exit 2)."""
    from multimodal_rec import Recommender
    from multimodal_rec.cli import main

    before = read_manifest(copy)["files"]

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    rec = Recommender.load(copy) if how == "save" else None
    monkeypatch.setattr(np, "save", full_disk)
    if how == "save":
        with pytest.raises(OSError, match="No space left"):
            rec.save(copy)
    else:
        cmd = ["encode", "--model", str(trained), "--catalog", str(world / "catalog.csv"), "--out", str(copy)]
        assert main([*cmd, "--rebuild", "--workers", "0", "-q"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "disk: No space left on device" in err[0], err
    monkeypatch.undo()
    assert read_manifest(copy, verify=True)["files"] == before  # every checksum of the old version passes
    assert len(Recommender.load(copy)) > 0
