"""``mmrec bench grow``: a bundle grown with synthetic videos near its own loads, serves, and keeps the real ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from multimodal_rec.cli import main


def test_grown_bundle_keeps_the_real_videos_and_adds_near_copies(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from multimodal_rec import Recommender

    src = Recommender.load(bundle)
    n0 = len(src)
    out = tmp_path / "grown"
    assert main(["bench", "grow", "--bundle", str(bundle), "--videos", str(n0 + 60), "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["videos"] == n0 + 60 and res["real_videos"] == n0
    rec = Recommender.load(out)
    assert len(rec) == n0 + 60 and len(set(rec.video_ids)) == n0 + 60
    assert rec.video_ids[:n0] == src.video_ids
    assert np.array_equal(np.asarray(rec.embeddings[:n0]), np.asarray(src.embeddings))
    extra = np.asarray(rec.embeddings[n0:])
    assert np.allclose(np.linalg.norm(extra, axis=1), 1.0, atol=1e-5)
    source = [src.row_of[v.split("~")[0]] for v in rec.video_ids[n0:]]  # each copy names the video it was made from
    cos = (extra * np.asarray(src.embeddings)[source]).sum(1)
    assert np.median(cos) > 0.8 and (cos < 0.999).all()  # near its source, not equal to it
    copy = rec.catalog.iloc[n0]
    assert copy["title"] == src.catalog.iloc[source[0]]["title"]  # with its source's metadata
    assert rec.search("a red circle", k=5) and rec.recommend([str(copy["title"])], k=5)


def test_grow_refuses_what_it_cannot_do(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "grow", "--bundle", str(bundle), "--videos", "1", "--out", str(tmp_path / "g")]) != 0
    assert "is not more than" in capsys.readouterr().err
    assert main(["bench", "grow", "--bundle", str(bundle), "--videos", "9999", "--out", str(tmp_path)]) != 0
    assert "exists" in capsys.readouterr().err
    assert main(["bench", "grow", "--bundle", str(bundle), "--out", str(tmp_path / "g")]) != 0
    assert "needs --bundle" in capsys.readouterr().err
