"""Tests for the tables (multimodal_rec.data.tables): the shapes a platform exports, and one error per file."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest

from multimodal_rec import UserError
from multimodal_rec.data.tables import load_dataset, read_captions, read_catalog, read_interactions

CATALOG = """video_id,path,title,description
v1,a.mp4,Red circle,A red circle moving left
v2,b.mp4,,A blue square moving up
v3,c.mp4,,
"""
CAPTIONS = "video_id,caption\nv3,green ball bouncing\nv3,a green ball\n"
EPOCH = "user_id,video_id,timestamp\nu1,v2,1714566600\nu1,v1,1714563000\nu2,v3,1714570200.5\n"
# the same instants as EPOCH, written as an export would: Z, an offset, and naive (= UTC)
ISO = (
    "user_id,video_id,timestamp\n"
    "u1,v2,2024-05-01T12:30:00Z\nu1,v1,2024-05-01T13:30:00+02:00\nu2,v3,2024-05-01 13:30:00.5\n"
)


def _dir(tmp_path: Path, interactions: str, captions: str | None = CAPTIONS, catalog: str = CATALOG) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "catalog.csv").write_text(catalog)
    (tmp_path / "interactions.csv").write_text(interactions)
    if captions is not None:
        (tmp_path / "captions.csv").write_text(captions)
    return tmp_path


def test_today_shape_is_unchanged(tmp_path: Path) -> None:
    ds = load_dataset(_dir(tmp_path, "user_id,video_id,timestamp,text\nu1,v1,5,hello\nu1,v2,3,hi\n"))
    assert list(ds.interactions["video_id"]) == ["v2", "v1"] and list(ds.interactions["text"]) == ["hi", "hello"]
    assert list(ds.interactions["timestamp"]) == [3, 5] and ds.interactions["timestamp"].dtype.kind == "i"
    assert list(ds.captions["caption"]) == ["green ball bouncing", "a green ball"] and not ds.captions_from_catalog
    assert ds.unknown_video_rows == 0


def test_iso_timestamps_give_epoch_seconds_and_the_same_order(tmp_path: Path) -> None:
    epoch = load_dataset(_dir(tmp_path / "a", EPOCH)).interactions
    iso = load_dataset(_dir(tmp_path / "b", ISO)).interactions
    assert list(iso["video_id"]) == list(epoch["video_id"]) == ["v1", "v2", "v3"]
    assert list(iso["timestamp"]) == pytest.approx(list(epoch["timestamp"]))


def test_no_text_column_takes_title_then_description_then_caption(tmp_path: Path) -> None:
    ds = load_dataset(_dir(tmp_path, EPOCH))
    assert dict(zip(ds.interactions["video_id"], ds.interactions["text"], strict=True)) == {
        "v1": "Red circle",  # title
        "v2": "A blue square moving up",  # no title: description
        "v3": "green ball bouncing",  # neither: the first caption
    }


def test_empty_text_cells_are_filled_and_given_ones_kept(tmp_path: Path) -> None:
    ds = load_dataset(_dir(tmp_path, "user_id,video_id,timestamp,text\nu1,v1,1,\nu1,v2,2,searched this\n"))
    assert list(ds.interactions["text"]) == ["Red circle", "searched this"]


def test_no_text_anywhere_for_a_video_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no text at line 4.*'v3'"):
        load_dataset(_dir(tmp_path, EPOCH, captions="video_id,caption\nv1,x\n"))


def test_no_captions_file_builds_captions_from_catalog_text(tmp_path: Path) -> None:
    cat = CATALOG.replace("v3,c.mp4,,", "v3,c.mp4,Green ball,")
    ds = load_dataset(_dir(tmp_path, ISO, captions=None, catalog=cat))
    assert ds.captions_from_catalog
    assert sorted(map(tuple, ds.captions[["video_id", "caption"]].values)) == [
        ("v1", "A red circle moving left"),
        ("v1", "Red circle"),
        ("v2", "A blue square moving up"),
        ("v3", "Green ball"),
    ]


def test_no_captions_file_and_no_catalog_text_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no captions\.csv and the catalog has no text") as e:
        load_dataset(_dir(tmp_path, "user_id,video_id,timestamp,text\nu1,v1,1,x\n", None, "video_id,path\nv1,a\n"))
    assert "\n" not in str(e.value)


def test_every_problem_of_interactions_in_one_message(tmp_path: Path) -> None:
    bad = "user_id,video_id,timestamp\nu1,v1,yesterday\n,v2,2024-05-01\nu2,,12\nu2,v1,13/05/2024\n"
    with pytest.raises(UserError) as e:
        read_interactions(_dir(tmp_path, bad) / "interactions.csv")
    msg = str(e.value)
    assert "3 problems" in msg and "\n" not in msg
    assert "empty user_id at line 3" in msg and "empty video_id at line 4" in msg
    assert "lines 2, 5" in msg and "'yesterday'" in msg and "ISO-8601" in msg and "epoch seconds" in msg


def test_missing_columns_and_bad_timestamps_reported_together(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"2 problems: \(1\) lacks required column\(s\) user_id.*\(2\).*line 2"):
        read_interactions(_dir(tmp_path, "video_id,timestamp\nv1,soon\n") / "interactions.csv")


def test_catalog_and_captions_report_every_problem(tmp_path: Path) -> None:
    d = _dir(tmp_path, EPOCH, captions="video_id,caption\nv1,\n,hello\n", catalog="video_id,path\nv1,a\nv1,b\n,c\n")
    with pytest.raises(UserError, match=r"catalog .*2 problems.*empty video_id at line 4.*repeats video_id 'v1'"):
        read_catalog(d / "catalog.csv")
    with pytest.raises(UserError, match=r"captions .*2 problems.*empty video_id at line 3.*empty caption at line 2"):
        read_captions(d / "captions.csv")


def test_unknown_video_ids_are_dropped_warned_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = EPOCH + "u2,gone,1714570300\nu3,gone,1714570400\nu3,lost,1714570500\n"
    with caplog.at_level(logging.WARNING, logger="multimodal_rec.data.tables"):
        ds = load_dataset(_dir(tmp_path, rows))
    assert ds.unknown_video_rows == 3
    assert set(ds.interactions["video_id"]) == {"v1", "v2", "v3"} and len(ds.interactions) == 3
    assert "dropped 3 of 6 rows naming 2 video id(s) not in the catalog" in caplog.text and "'gone': 2" in caplog.text


def test_interactions_naming_no_known_video_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="none of its 1 rows names a video of the catalog"):
        load_dataset(_dir(tmp_path, "user_id,video_id,timestamp\nu1,x9,1\n"))


def test_train_runs_on_a_platform_export(world: Path, tmp_path: Path, tiny_cfg) -> None:
    """``user_id,video_id,timestamp`` with ISO times, no captions.csv: trains with no edits."""
    from dataclasses import replace

    from multimodal_rec.training.train import train

    data = tmp_path / "export"
    shutil.copytree(world, data, ignore=shutil.ignore_patterns(".mmrec-cache"))
    (data / "captions.csv").unlink()
    inter = pd.read_csv(data / "interactions.csv", dtype=str)
    when = pd.to_datetime(inter["timestamp"].astype(float), unit="s", utc=True)
    inter = inter.assign(timestamp=when.dt.strftime("%Y-%m-%dT%H:%M:%S%z"))[["user_id", "video_id", "timestamp"]]
    inter.to_csv(data / "interactions.csv", index=False)
    ds = load_dataset(data)
    assert ds.captions_from_catalog and ds.unknown_video_rows == 0 and ds.interactions["text"].notna().all()
    order = ["user_id", "video_id"]  # the ISO times give the histories of the epoch times
    assert ds.interactions[order].equals(load_dataset(world).interactions[order])
    cfg = replace(tiny_cfg, train=replace(tiny_cfg.train, max_steps=2))
    result = train(cfg, data, tmp_path / "run", cache_dir=tmp_path / "cache")
    assert result.steps > 0 and (tmp_path / "run" / "model.safetensors").is_file()
