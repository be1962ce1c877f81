"""Long videos and the video's own text (issue 14): segments, content / text / item vectors, the bundle's new files,
resume and incremental updates at segment granularity, text-only rows, encode_items == the encode job."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from long_video import make_long_video
from test_encode import StopAfter

from multimodal_rec import UserError
from multimodal_rec.bundle import encode_config_of, load_bundle, read_manifest
from multimodal_rec.config import EncodeConfig
from multimodal_rec.data.frames import read_segments
from multimodal_rec.encoding import encode_catalog, encode_videos
from multimodal_rec.encoding.embed import embed_clips, embed_texts
from multimodal_rec.encoding.items import encode_items
from multimodal_rec.encoding.job import plan_encode
from multimodal_rec.encoding.local import run_local
from multimodal_rec.model.checkpoint import load_model

SEG = {"segment_seconds": 3.3}  # the long videos below: three 3.3 s parts -> three segments


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def long_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("long")
    make_long_video(d / "long_a.mp4", seed=1)
    make_long_video(d / "long_b.mp4", parts=(("yellow", "square", "right"), ("white", "circle", "down")), seed=2)
    return d


@pytest.fixture(scope="module")
def mixed(world: Path, long_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Short clips with and without titles, two long videos, a text-only row, a missing file, an empty row."""
    cat = pd.read_csv(world / "catalog.csv").head(9)[["video_id", "path", "title"]]
    cat["path"] = [str(world / p) for p in cat["path"]]
    cat.loc[[1, 4, 7], "title"] = ""
    extra = pd.DataFrame(
        {
            "video_id": ["long_a", "long_b", "textonly", "gone", "nothing"],
            "path": [str(long_dir / "long_a.mp4"), str(long_dir / "long_b.mp4"), "", str(long_dir / "x.mp4"), ""],
            "title": ["Zorvan Plet: a red circle, then green", "", "Mibble Trask: a purple triangle", "Gone", ""],
        }
    )
    rows = pd.concat([cat.iloc[:3], extra.iloc[:1], cat.iloc[3:6], extra.iloc[1:], cat.iloc[6:]], ignore_index=True)
    path = tmp_path_factory.mktemp("mixed") / "catalog.csv"
    rows.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def mixed_bundle(trained: Path, mixed: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mixed_bundle") / "b"
    return encode_catalog(trained, mixed, out, batch_size=2, shard_size=4, workers=0, encode=SEG).bundle


def test_long_video_segments_and_vectors(trained: Path, mixed: Path, mixed_bundle: Path) -> None:
    b = load_bundle(mixed_bundle)
    model, _ = load_model(trained)
    ids = list(b.catalog["video_id"])
    assert "textonly" in ids and "gone" not in ids and "nothing" not in ids
    assert b.fields["encode"] == {**vars(EncodeConfig()), **SEG} and b.fields["segments"] == len(b.segments)
    segs = b.segments[b.segments["video_id"] == "long_a"]
    np.testing.assert_allclose(segs[["start_s", "end_s"]], [[0, 3.3], [3.3, 6.6], [6.6, 9.9]], atol=1e-9)
    assert (segs["row"] == ids.index("long_a")).all() and list(segs.index) == sorted(segs.index)
    vcfg = model.cfg.video
    frames, _ = read_segments(
        pd.read_csv(mixed).set_index("video_id").loc["long_a", "path"], vcfg.num_frames, vcfg.image_size, 3.3, 64
    )
    raw = embed_clips(model, list(frames))
    np.testing.assert_allclose(b.segment_content[segs.index], raw, atol=1e-5)
    r, w = ids.index("long_a"), 0.5
    c = _unit(raw.mean(0))  # equal windows: the duration-weighted mean is the plain mean
    t = embed_texts(model, ["Zorvan Plet: a red circle, then green"])[0]
    np.testing.assert_allclose(b.content[r], c, atol=1e-5)
    np.testing.assert_allclose(b.text[r], t, atol=1e-5)
    np.testing.assert_allclose(b.embeddings[r], _unit((1 - w) * c + w * t), atol=1e-5)
    np.testing.assert_allclose(b.segment_embeddings[segs.index], _unit((1 - w) * raw + w * t), atol=1e-5)
    # a long video without text: content only, its segments' raw vectors as search vectors
    rb = ids.index("long_b")
    assert not b.text[rb].any() and np.array_equal(b.embeddings[rb], b.content[rb])
    sb = b.segments.index[b.segments["video_id"] == "long_b"]
    assert len(sb) == 2 and np.array_equal(b.segment_embeddings[sb], b.segment_content[sb])


def test_short_clips_are_one_segment_whose_vector_is_the_item(mixed_bundle: Path) -> None:
    b = load_bundle(mixed_bundle)
    counts = b.segments["row"].value_counts()
    for r, v in enumerate(b.catalog["video_id"]):
        if v.startswith("long"):
            continue
        assert counts[r] == 1, v
        s = b.segments.index[b.segments["row"] == r][0]
        np.testing.assert_array_equal(b.segment_embeddings[s], b.embeddings[r])
        start, end = b.segments.loc[s, ["start_s", "end_s"]]
        assert start == 0 and (end > 0 if v != "textonly" else end == 0)


def test_text_only_row_and_bad_files(trained: Path, mixed_bundle: Path) -> None:
    b = load_bundle(mixed_bundle)
    model, _ = load_model(trained)
    r = list(b.catalog["video_id"]).index("textonly")
    t = embed_texts(model, ["Mibble Trask: a purple triangle"])[0]
    np.testing.assert_allclose(b.embeddings[r], t, atol=1e-5)
    assert not b.content[r].any()
    skipped = pd.read_csv(mixed_bundle / "skipped.csv", keep_default_na=False)
    reasons = dict(zip(skipped["video_id"], skipped["reason"], strict=True))
    assert set(reasons) == {"gone", "nothing"} and "not found" in reasons["gone"] and "no text" in reasons["nothing"]


def test_short_clips_without_text_are_bit_identical_to_before(world: Path, trained: Path, tmp_path: Path) -> None:
    """No text column (or text_weight 0): the embeddings of a short-clip catalog are today's, bit for bit (the
    video tower over the same frames in the same batches), and no segment file is written."""
    cat = pd.read_csv(world / "catalog.csv")
    paths = [str(world / p) for p in cat["path"]]
    pd.DataFrame({"video_id": cat["video_id"], "path": paths}).to_csv(tmp_path / "plain.csv", index=False)
    before, errors = encode_videos(load_model(trained)[0], paths, batch_size=8)  # today's path: read_frames
    assert not any(errors)
    plain = encode_catalog(trained, tmp_path / "plain.csv", tmp_path / "a", batch_size=8, workers=0).bundle
    titled = encode_catalog(
        trained, world / "catalog.csv", tmp_path / "b", batch_size=8, workers=0, encode={"text_weight": 0.0}
    ).bundle
    for out in (plain, titled):
        np.testing.assert_array_equal(np.load(out / "embeddings.npy"), before)
        assert not any((out / f).exists() for f in ("segments.parquet", "segment_embeddings.npy", "segments.faiss"))
    assert not (plain / "text.npy").exists() and not (plain / "content.npy").exists()
    np.testing.assert_array_equal(np.load(titled / "content.npy"), before)


def _arrays(bundle: Path) -> dict[str, np.ndarray]:
    names = ("embeddings", "content", "text", "segment_embeddings", "segment_content")
    got = {n: np.load(bundle / f"{n}.npy") for n in names}
    got["segments"] = pd.read_parquet(bundle / "segments.parquet").to_numpy()
    got["sources"] = pd.read_parquet(bundle / "sources.parquet").drop(columns=["mtime_ns"]).to_numpy()
    return got


def _assert_same(a: Path, b: Path, exact: bool = True) -> None:
    x, y = _arrays(a), _arrays(b)
    for k in x:
        if exact or x[k].dtype == object:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
        else:
            np.testing.assert_allclose(x[k], y[k], atol=1e-5, err_msg=k)


def test_resume_with_long_videos_equals_an_uninterrupted_run(
    trained: Path, mixed: Path, mixed_bundle: Path, tmp_path: Path
) -> None:
    kw = {"batch_size": 2, "shard_size": 4, "encode": SEG}
    job = plan_encode(trained, mixed, tmp_path / "b", **kw)
    with pytest.raises(KeyboardInterrupt):
        run_local(job, workers=0, progress=StopAfter(9))  # shards 0 and 1 (the first long video) complete
    work = tmp_path / ".b.work"
    assert (work / "shard-000001.json").is_file() and not (work / "shard-000002.json").is_file()
    res = encode_catalog(trained, mixed, tmp_path / "b", workers=0, **kw)
    assert res.resumed == 8 and res.resumed + res.encoded + len(res.skipped) == 14
    _assert_same(res.bundle, mixed_bundle)


@pytest.mark.parametrize("change", [{"segment_seconds": 5.0}, {"max_segments": 2}, {"text_weight": 0.2}, "text"])
def test_changed_settings_or_texts_never_reuse_shards(
    trained: Path, mixed: Path, tmp_path: Path, change: dict | str
) -> None:
    kw = {"batch_size": 2, "shard_size": 4}
    job = plan_encode(trained, mixed, tmp_path / "b", encode=SEG, **kw)
    with pytest.raises(KeyboardInterrupt):
        run_local(job, workers=0, progress=StopAfter(5))
    catalog, enc = mixed, {**SEG, **(change if isinstance(change, dict) else {})}
    if change == "text":
        cat = pd.read_csv(mixed, keep_default_na=False)
        cat.loc[0, "title"] = "Another title altogether"
        catalog = tmp_path / "retitled.csv"
        cat.to_csv(catalog, index=False)
    res = encode_catalog(trained, catalog, tmp_path / "b", workers=0, encode=enc, **kw)
    clean = encode_catalog(trained, catalog, tmp_path / "clean", workers=0, encode=enc, **kw)
    assert res.resumed == 0
    np.testing.assert_array_equal(np.load(res.bundle / "embeddings.npy"), np.load(clean.bundle / "embeddings.npy"))


def test_incremental_update_reuses_segments_and_texts(
    trained: Path, mixed: Path, mixed_bundle: Path, tmp_path: Path
) -> None:
    out = Path(shutil.copytree(mixed_bundle, tmp_path / "b"))
    cat = pd.read_csv(mixed, keep_default_na=False)
    cat.loc[cat["video_id"] == "long_b", "title"] = "Quillow Snarb: yellow then white"  # same file, new text
    cat = cat[cat["video_id"] != cat["video_id"][0]]  # one removed
    cat.to_csv(tmp_path / "next.csv", index=False)
    res = encode_catalog(trained, tmp_path / "next.csv", out, batch_size=2, shard_size=4, workers=0, encode=SEG)
    assert (res.encoded, res.removed, res.total) == (0, 1, 11) and res.reused == 11
    clean = encode_catalog(trained, tmp_path / "next.csv", tmp_path / "clean", batch_size=2, workers=0, encode=SEG)
    _assert_same(out, clean.bundle, exact=False)
    old, new = load_bundle(mixed_bundle), load_bundle(out)
    for v in ("long_a", "textonly", cat["video_id"].iloc[1]):  # unchanged: the very same vectors
        i, j = list(old.catalog["video_id"]).index(v), list(new.catalog["video_id"]).index(v)
        np.testing.assert_array_equal(new.embeddings[j], old.embeddings[i])
    # another text weight: nothing re-encoded, every item vector recombined
    res = encode_catalog(trained, tmp_path / "next.csv", out, batch_size=2, workers=0, encode={**SEG, "text_weight": 1})
    assert res.encoded == 0 and res.reused == 11
    b = load_bundle(out)
    has = b.text.any(1)
    np.testing.assert_allclose(b.embeddings[has], b.text[has], atol=1e-6)


def test_encode_items_gives_the_jobs_vectors(trained: Path, mixed: Path, mixed_bundle: Path) -> None:
    from multimodal_rec.data.tables import read_catalog

    model, _ = load_model(trained)
    df = read_catalog(mixed)
    enc = encode_config_of(read_manifest(mixed_bundle))
    iv, errors = encode_items(model, df, enc, batch_size=2)
    b = load_bundle(mixed_bundle)
    assert [bool(e) for e in errors] == [v in ("gone", "nothing") for v in df["video_id"]]
    np.testing.assert_allclose(iv.item, b.embeddings, atol=1e-5)
    np.testing.assert_allclose(iv.content, b.content, atol=1e-5)
    np.testing.assert_allclose(iv.text, b.text, atol=1e-5)
    np.testing.assert_allclose(iv.seg_vectors, b.segment_embeddings, atol=1e-5)
    np.testing.assert_array_equal(iv.seg_row, b.segments["row"])
    np.testing.assert_allclose(iv.spans, b.segments[["start_s", "end_s"]], atol=1e-9)
    no_text, _ = encode_items(model, df[["video_id", "abs_path"]].iloc[:2], enc, batch_size=2)
    assert no_text.text is None and len(no_text.item) == 2


def test_legacy_bundle_settings_reproduce_its_vectors() -> None:
    """A bundle without ``encode`` in its manifest was made one segment per video, content only."""
    legacy = encode_config_of({})
    assert legacy.segment_seconds <= 0 and legacy.text_weight == 0
    assert encode_config_of({"encode": {**vars(EncodeConfig()), "max_segments": 3}}).max_segments == 3


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--max-segments", "0", "max_segments"),
        ("--text-weight", "1.5", "text_weight"),
        ("--text-weight", "-0.1", "text_weight"),
    ],
)
def test_bad_encode_flags_are_one_line_errors(
    trained: Path, mixed: Path, tmp_path: Path, capsys, flag: str, value: str, words: str
) -> None:
    from multimodal_rec.cli import main

    argv = ["encode", "--model", str(trained), "--catalog", str(mixed), "--out", str(tmp_path / "b"), "-q"]
    assert main([*argv, flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    with pytest.raises(UserError, match=words):
        encode_catalog(trained, mixed, tmp_path / "b", workers=0, encode={words: float(value)})


def test_cli_flags_are_recorded_and_sharded_bundles_keep_one_segment_index(
    trained: Path, mixed: Path, tmp_path: Path
) -> None:
    from multimodal_rec.cli import main

    out = tmp_path / "b"
    argv = ["encode", "--model", str(trained), "--catalog", str(mixed), "--out", str(out), "-q", "--workers", "0"]
    flags = ["--segment-seconds", "3.3", "--max-segments", "2", "--text-columns", "nope,title", "--text-weight", "0.3"]
    assert main([*argv, *flags, "--index-shards", "2"]) == 0
    m = read_manifest(out)
    assert m["encode"] == {"segment_seconds": 3.3, "max_segments": 2, "shots": False,
                           "text_columns": ["nope", "title"], "text_weight": 0.3}  # fmt: skip
    assert m["index_shards"] == 2 and len(m["index_files"]) == 2 and "segments.faiss" in m["files"]
    b = load_bundle(out)
    assert b.segments.groupby("video_id").size().max() == 2 and b.segment_index.ntotal == len(b.segments)
    assert b.index.ntotal == len(b.catalog) == 12
    assert json.loads((out / "bundle.json").read_text())["segments"] == len(b.segments)


def test_a_bundle_without_raw_segment_vectors_is_encoded_again(
    trained: Path, mixed: Path, mixed_bundle: Path, tmp_path: Path
) -> None:
    """A bundle written with its served vectors only (no segment_content.npy, no durations) cannot give back the
    raw segment vectors: everything is encoded again, never a wrong reuse."""
    from multimodal_rec.bundle import Bundle, save_bundle

    a = load_bundle(mixed_bundle)
    b = Bundle(a.model, a.cfg, a.catalog, a.embeddings, a.sources, a.skipped, a.indexes, a.fields)
    b.segments, b.segment_embeddings, b.segment_index = a.segments, a.segment_embeddings, a.segment_index
    out = save_bundle(tmp_path / "b", b)
    assert not (out / "segment_content.npy").exists()
    res = encode_catalog(trained, mixed, out, batch_size=2, shard_size=4, workers=0, encode=SEG)
    assert (res.reused, res.encoded) == (0, 12)
    _assert_same(res.bundle, mixed_bundle)


def test_shots_flag_cuts_long_videos_at_their_parts(trained: Path, mixed: Path, tmp_path: Path) -> None:
    pytest.importorskip("scenedetect")
    from multimodal_rec.cli import main

    out = tmp_path / "b"
    argv = ["encode", "--model", str(trained), "--catalog", str(mixed), "--out", str(out), "-q", "--workers", "0"]
    assert main([*argv, "--segment-seconds", "5", "--shots"]) == 0  # 5 s windows would straddle the 3.3 s parts
    assert read_manifest(out)["encode"]["shots"] is True
    segs = load_bundle(out).segments
    for vid, parts in (("long_a", 3), ("long_b", 2)):
        s = segs[segs["video_id"] == vid]
        np.testing.assert_allclose(s[["start_s", "end_s"]].to_numpy(), [[3.3 * i, 3.3 * (i + 1)] for i in range(parts)])
    assert (segs.groupby("video_id").size().drop(["long_a", "long_b"]) == 1).all()  # short clips: one segment
