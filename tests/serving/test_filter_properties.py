"""Property test (issue 19): filtered search returns exactly the videos a brute-force filter over the catalog keeps.

hypothesis draws conjunctions of equality, any-of and inclusive-range conditions over the tiny bundle's text and
numeric columns; with ``k`` at least the number of videos, a filtered search must return every passing video and
nothing else, whatever the index does inside (the ID selector, tombstones)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from multimodal_rec import Recommender  # noqa: E402

TEXT_COLS = ("color", "shape", "motion", "split")
NUM_COLS = ("duration_s", "fps", "width")


@pytest.fixture(scope="module")
def rec(bundle: Path) -> Recommender:
    return Recommender.load(bundle)


def _brute(cat: pd.DataFrame, filters: dict) -> set[str]:
    keep = np.ones(len(cat), bool)
    for col, cond in filters.items():
        values = cat[col]
        if isinstance(cond, tuple):
            lo, hi = cond
            ok = values.notna().to_numpy().copy()
            if lo is not None:
                ok &= (values >= lo).to_numpy()
            if hi is not None:
                ok &= (values <= hi).to_numpy()
        elif isinstance(cond, list):
            ok = values.isin(cond).to_numpy()
        else:
            ok = (values == cond).to_numpy()
        keep &= ok
    return set(cat["video_id"][keep])


@st.composite
def filters(draw, cat: pd.DataFrame) -> dict:
    out = {}
    for col in draw(st.lists(st.sampled_from(TEXT_COLS + NUM_COLS), min_size=1, max_size=3, unique=True)):
        seen = sorted(cat[col].dropna().unique().tolist())
        if col in TEXT_COLS:
            pick = st.sampled_from(seen) | st.just("no-such-value")
            out[col] = draw(pick | st.lists(pick, min_size=1, max_size=4))
        else:
            bound = st.none() | st.sampled_from(seen) | st.floats(min(seen) - 1, max(seen) + 1, allow_nan=False)
            lo, hi = draw(bound), draw(bound)
            if lo is None and hi is None:
                hi = max(seen)
            if lo is not None and hi is not None and lo > hi:
                lo, hi = hi, lo
            out[col] = (lo, hi)
    return out


def test_filtered_search_keeps_exactly_what_brute_force_keeps(rec: Recommender) -> None:
    cat = rec.catalog

    @settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(f=filters(cat))
    def check(f: dict) -> None:
        want = _brute(cat, f)
        hits = rec.search("a red circle moving left", k=len(rec), filters=f, mode="vector")
        got = [h.video_id for h in hits]
        assert len(got) == len(set(got)) and set(got) == want, (f, len(want), len(got))
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)

    check()
