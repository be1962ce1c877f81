"""Moments end to end: a long video encoded into segments is found at the right time, added long videos keep their
segments through save and load, and a saved bundle is reused by incremental encoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("multimodal_rec.encoding.items")  # the encode side of issue 14
from long_video import make_long_video

from multimodal_rec.bundle import load_bundle
from multimodal_rec.encoding import encode_catalog
from multimodal_rec.model.prior import with_prior_column
from multimodal_rec.serving.recommender import Recommender

SEG = {"segment_seconds": 3.3, "text_weight": 0.0}  # three 3.3 s parts -> three segments; content only


@pytest.fixture(scope="module")
def long_bundle(trained: Path, world: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A bundle of 8 short clips and one long video of three parts; and a second long video (its path)."""
    d = tmp_path_factory.mktemp("long")
    make_long_video(d / "long_a.mp4", seed=1)
    make_long_video(d / "long_b.mp4", parts=(("yellow", "square", "right"), ("white", "circle", "down")), seed=2)
    cat = pd.read_csv(world / "catalog.csv").head(8)  # no text columns: search is by vector in every version
    cat = cat.drop(columns=[c for c in ("title", "description", "tags") if c in cat.columns])
    cat["path"] = [str(world / p) for p in cat["path"]]
    long = pd.DataFrame({"video_id": ["long_a"], "path": [str(d / "long_a.mp4")], "duration_s": [9.9]})
    path = d / "catalog.csv"
    pd.concat([cat, long], ignore_index=True).to_csv(path, index=False)
    out = tmp_path_factory.mktemp("long_bundle") / "b"
    encode_catalog(trained, path, out, batch_size=4, workers=0, encode=SEG)
    return out, d / "long_b.mp4"


def _asking_for(rec: Recommender, q: np.ndarray) -> Recommender:
    """``rec`` with every text query read as the vector ``q``."""
    rec.text_queries = lambda texts: with_prior_column(np.repeat(q[None], len(texts), 0), rec.xb.shape[1], 0.0)
    return rec


def test_a_long_videos_moment_is_found_at_the_right_time(long_bundle: tuple[Path, Path]) -> None:
    out, _ = long_bundle
    b = load_bundle(out)
    rec = Recommender.load(out)
    segs = rec.segments[rec.segments["video_id"] == "long_a"]
    assert np.allclose(segs[["start_s", "end_s"]].to_numpy(), [[0, 3.3], [3.3, 6.6], [6.6, 9.9]], atol=0.05)
    middle = int(segs.index[1])  # the second part (green square) as the query: found there, not elsewhere
    _asking_for(rec, np.asarray(b.segment_embeddings[middle], dtype=np.float32))
    top = rec.search("the middle part", k=3)[0]
    assert top.video_id == "long_a" and top.score == pytest.approx(1.0, abs=1e-4)
    assert top.moment["start_s"] == pytest.approx(3.3, abs=0.05) and top.moment["end_s"] == pytest.approx(6.6, abs=0.05)
    first = rec.search_moments("the middle part", k=1)[0]
    assert (first.video_id, first.moment["start_s"]) == ("long_a", top.moment["start_s"])


def test_added_long_video_saved_loaded_and_reused(
    long_bundle: tuple[Path, Path], trained: Path, tmp_path: Path
) -> None:
    out, long_b = long_bundle
    rec = Recommender.load(out)
    res = rec.add_videos(pd.DataFrame({"video_id": ["long_b"], "path": [str(long_b)], "duration_s": [6.6]}))
    assert res.added == ["long_b"] and len(rec.segments[rec.segments["video_id"] == "long_b"]) == 2
    rec.remove_videos([rec.video_ids[0]])
    saved = rec.save(tmp_path / "saved")
    loaded = Recommender.load(saved)
    assert loaded.segments[["video_id", "start_s", "end_s"]].equals(rec.segments[["video_id", "start_s", "end_s"]])
    q = np.asarray(load_bundle(saved).segment_embeddings[-1], dtype=np.float32)  # long_b's last part
    answers = []
    for r in (rec, loaded):
        _asking_for(r, q)
        answers.append([(h.video_id, round(h.score, 5), h.moment) for h in r.search("x", k=5) + r.search_moments("x")])
    assert answers[0] == answers[1] and answers[0][0][0] == "long_b"
    # incremental encoding over the saved bundle reuses every video's segments (nothing decoded again)
    cat = loaded.catalog.assign(path=list(load_bundle(saved).sources["abs_path"]))
    cat.to_csv(tmp_path / "catalog.csv", index=False)
    before = load_bundle(saved)
    res = encode_catalog(trained, tmp_path / "catalog.csv", saved, batch_size=4, workers=0, encode=SEG)
    after = load_bundle(saved)
    assert res.reused == len(loaded) == 9
    assert after.segments[["video_id", "start_s", "end_s"]].equals(before.segments[["video_id", "start_s", "end_s"]])
    assert np.allclose(after.segment_embeddings, before.segment_embeddings, atol=1e-6)


def test_contact_sheet_shows_the_matched_moment(long_bundle: tuple[Path, Path], tmp_path: Path) -> None:
    """A hit inside a long video is drawn from its moment: the middle part (a green square) is green, not the red
    and blue parts around it."""
    from PIL import Image

    from multimodal_rec.serving.contact_sheet import LABEL_W, PAD, rows_for_hits, write_contact_sheet
    from multimodal_rec.serving.results import Hit

    out, _ = long_bundle
    rec = Recommender.load(out)
    meta = {"duration_s": 9.9}
    parts = [Hit("long_a", 1.0, i + 1, meta, moment={"start_s": a, "end_s": b, "score": 1.0}) for i, (a, b) in
             enumerate([(3.3, 6.6), (0.0, 3.3), (0.0, 9.9)])]  # fmt: skip
    rows = rows_for_hits(rec, parts)
    assert [r.span for r in rows] == [(3.3, 6.6), (0.0, 3.3), None]  # the whole video: sampled as before
    assert rows[0].label[2] == "00:03–00:07"
    px = np.asarray(Image.open(write_contact_sheet(rows, tmp_path / "s.png", frames=4, size=32)).convert("RGB"))
    row_h = 32 + 2 * PAD
    frames = [px[r * row_h + PAD : r * row_h + PAD + 32, LABEL_W:].astype(float) for r in range(3)]
    green = [float((f[..., 1] - f[..., 0]).mean()) for f in frames]  # G - R over the row's frames
    assert green[0] > 5 and green[1] < -5 and green[0] > green[2] > green[1]
