"""Metadata filters: the row-mask rules, and filtered FAISS search against exact search over the passing rows."""

from __future__ import annotations

import faiss
import numpy as np
import pandas as pd
import pytest

from multimodal_rec.bench.index import clustered_vectors
from multimodal_rec.errors import UserError
from multimodal_rec.index import search as index_mod
from multimodal_rec.index.build import build_index, get_search_params
from multimodal_rec.index.search import exact_search, search_masked
from multimodal_rec.serving.filters import filter_mask, parse_filter_exprs

NB, D = 3000, 32
FACTORIES = ["Flat", "HNSW32", "IVF32,Flat", "IVF32,PQ16x4fs,RFlat"]


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered_vectors(NB, D, n_clusters=30), clustered_vectors(40, D, stream=1, n_clusters=30)


@pytest.fixture(scope="module", params=FACTORIES)
def built(request: pytest.FixtureRequest, data: tuple[np.ndarray, np.ndarray]) -> tuple[str, object]:
    return request.param, build_index(data[0], request.param)


def _exact_subset(xb: np.ndarray, xq: np.ndarray, k: int, mask: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(mask)
    _, I = exact_search(xb[rows], xq, k)  # noqa: E741
    return rows[I]


def _recall(I: np.ndarray, ref: np.ndarray) -> float:  # noqa: E741
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(I, ref, strict=True)]))


@pytest.mark.parametrize("share", [0.5, 0.1])
def test_filtered_search_inside_faiss_matches_exact(
    built: tuple[str, object], data: tuple[np.ndarray, np.ndarray], share: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_mod, "EXACT_SUBSET_MAX", 0)  # always the ID-selector path
    factory, index = built
    xb, xq = data
    mask = np.random.default_rng(3).random(NB) < share
    D, I = search_masked(index, xb, xq, 10, mask)  # noqa: E741
    assert I.shape == (len(xq), 10) and (I >= 0).all(), "k hits whenever k rows pass"
    assert mask[I].all(), "a row outside the filter came back"
    assert (np.diff(D, axis=1) <= 1e-6).all()
    ref = _exact_subset(xb, xq, 10, mask)
    if factory == "Flat":
        np.testing.assert_array_equal(I, ref)
    else:
        assert _recall(I, ref) >= 0.9, factory
    np.testing.assert_allclose(D, np.take_along_axis(xq @ xb.T, I, axis=1), atol=1e-4)  # exact scores (refined)


def test_filtered_search_keeps_stored_search_params(built: tuple[str, object]) -> None:
    _, index = built
    sel = faiss.IDSelectorAll()
    params = index_mod.selector_params(index, sel)
    stored = get_search_params(index)
    if "k_factor" in stored:
        assert params.k_factor == stored["k_factor"]
        params = params._sp_field_refs["base_index_params"]  # the Python object FAISS keeps alive for it
    if "nprobe" in stored:
        assert params.nprobe == stored["nprobe"] > 1  # not the per-call default nprobe=1
    if "efSearch" in stored:
        assert params.efSearch == stored["efSearch"] > 16  # not the per-call default efSearch=16
    assert params.sel is not None


def test_very_selective_filter_still_gives_k_exact_hits(
    built: tuple[str, object], data: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """HNSW / IVF walks rarely meet 12 scattered rows: the short queries are answered exactly over those rows."""
    monkeypatch.setattr(index_mod, "EXACT_SUBSET_MAX", 0)
    _, index = built
    xb, xq = data
    mask = np.zeros(NB, dtype=bool)
    mask[np.random.default_rng(4).choice(NB, 12, replace=False)] = True
    _, I = search_masked(index, xb, xq, 10, mask)  # noqa: E741
    np.testing.assert_array_equal(I, _exact_subset(xb, xq, 10, mask))
    _, I = search_masked(index, xb, xq, 50, mask)  # noqa: E741
    assert I.shape == (len(xq), 12), "k is capped by the rows that pass"


def test_small_subset_is_scanned_exactly(built: tuple[str, object], data: tuple[np.ndarray, np.ndarray]) -> None:
    _, index = built
    xb, xq = data
    mask = np.zeros(NB, dtype=bool)
    mask[::7] = True  # 429 rows <= EXACT_SUBSET_MAX
    _, I = search_masked(index, xb, xq, 10, mask)  # noqa: E741
    np.testing.assert_array_equal(I, _exact_subset(xb, xq, 10, mask))
    _, I = search_masked(index, xb, xq, 10, np.zeros(NB, dtype=bool))  # noqa: E741
    assert I.shape == (len(xq), 0)


# --- the filter rules ---------------------------------------------------------------------------------------------
@pytest.fixture
def cat() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "video_id": ["a", "b", "c", "d"],
            "language": ["en", "fr", "en", None],
            "duration_s": [30.0, 90.0, 61.0, float("nan")],
            "fps": [24, 30, 24, 25],
            "kids": [True, False, False, True],
            "added": pd.to_datetime(["2024-01-01", "2024-06-01", "2025-01-01", "2023-01-01"]),
        }
    )


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"language": "en"}, "ac"),
        ({"language": ["en", "fr"]}, "abc"),
        ({"duration_s": (None, 60)}, "a"),
        ({"duration_s": (61, None)}, "bc"),  # inclusive; NaN never passes
        ({"duration_s": {"min": 30, "max": 61}}, "ac"),
        ({"duration_s": (None, 100), "language": "en"}, "ac"),
        ({"fps": 24}, "ac"),
        ({"fps": [25, 30]}, "bd"),
        ({"kids": True}, "ad"),
        ({"added": ("2024-03-01", None)}, "bc"),
        ({"video_id": ["b", "zz"]}, "b"),
        ({"duration_s": [None, 60]}, "a"),  # JSON [null, 60]: null is an open end, as in (None, 60)
        ({"duration_s": [61, None]}, "bc"),
        ({"added": [None, "2024-03-01"]}, "ad"),
        ({"fps": [24, 30]}, "abc"),  # two values, no null: any of them
    ],
)
def test_filter_rules(cat: pd.DataFrame, filters: dict, expected: str) -> None:
    mask = filter_mask(cat, filters)
    assert "".join(cat["video_id"][mask]) == expected


def test_no_filter_is_none(cat: pd.DataFrame) -> None:
    assert filter_mask(cat, None) is None and filter_mask(cat, {}) is None


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"lang": "en"}, "unknown filter column 'lang'"),
        ({"language": ("a", "z")}, "a range needs a numeric or date column"),
        ({"duration_s": "long"}, "filter 'duration_s': expected a number"),
        ({"duration_s": (None, "60")}, "expected a number"),
        ({"duration_s": (1, 2, 3)}, "a range is a (min, max) pair"),
        ({"duration_s": (None, None)}, "at least one bound"),
        ({"duration_s": (90, 10)}, "empty range"),
        ({"duration_s": {"lo": 1}}, "keys min and/or max"),
        ({"language": 5}, "expected a string"),
        ({"language": []}, "empty list"),
        ({"language": None}, "null"),
        ({"duration_s": [None, None]}, "at least one bound"),
        ({"language": [None, "en"]}, "a range needs a numeric or date column"),
        ({"duration_s": [None, 1, 2]}, "null is not a value to filter on (a range is [min, max], null = open)"),
        ({"fps": True}, "expected a number"),
        ({"kids": "yes"}, "expected true or false"),
        ({"added": "not a date"}, "not a date/time"),
        (["language", "en"], "filters must be a mapping"),
    ],
)
def test_bad_filters_are_one_line_user_errors(cat: pd.DataFrame, filters: object, message: str) -> None:
    with pytest.raises(UserError) as e:
        filter_mask(cat, filters)  # type: ignore[arg-type]
    assert message in str(e.value) and "\n" not in str(e.value)


def test_command_line_expressions(cat: pd.DataFrame) -> None:
    exprs = ["language=en,fr", "duration_s>=30", " duration_s <= 61.5 ", "fps=24", "kids=true", "video_id=007"]
    filters = parse_filter_exprs(exprs, cat)
    assert filters == {
        "language": ["en", "fr"],
        "duration_s": (30, 61.5),
        "fps": 24,
        "kids": True,
        "video_id": "007",  # a text column keeps the string
    }
    assert "".join(cat["video_id"][filter_mask(cat, filters)]) == ""
    assert "".join(cat["video_id"][filter_mask(cat, parse_filter_exprs(exprs[:3], cat))]) == "ac"
    for bad, message in (("fps=fast", "expected a number"), ("lang=en", "unknown filter column"), ("fps", "expects")):
        with pytest.raises(UserError, match=message):
            parse_filter_exprs([bad], cat)
