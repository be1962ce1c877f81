"""A serving process keeps one copy of nothing big: the embeddings stay memory-mapped (shared by every worker
through the page cache) and hit metadata is read from the catalog's columns, not from a per-row copy of it."""

from __future__ import annotations

import math
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from multimodal_rec.model.prior import index_vectors
from multimodal_rec.serving.catalog import CatalogState
from multimodal_rec.serving.records import column_readers, native


def _same(a: object, b: object) -> bool:
    if a is pd.NaT and b is pd.NaT:
        return True
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b and type(a) is type(b)


def test_serving_state_holds_no_copy_of_the_embeddings(tmp_path: Path) -> None:
    n, d = 20_000, 256
    rng = np.random.default_rng(0)
    np.save(tmp_path / "e.npy", rng.standard_normal((n, d), np.float32))
    emb = np.load(tmp_path / "e.npy", mmap_mode="r")
    cat = pd.DataFrame({"video_id": [f"v{i}" for i in range(n)], "train_interactions": rng.integers(0, 9, n)})
    tracemalloc.start()
    try:
        state = CatalogState(cat, emb, None, popularity_prior=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.25 * emb.nbytes, f"building the serving state allocated {peak / 2**20:.1f} MiB"
    ref = index_vectors(np.asarray(emb), cat, True)  # what the index holds, built whole
    rows = np.array([0, 7, n - 1])
    assert np.array_equal(state.xb[rows], ref[rows]) and np.array_equal(state.xb[5:9], ref[5:9])
    assert np.array_equal(state.xb[:, -1], ref[:, -1]) and state.xb.shape == ref.shape
    assert np.array_equal(np.vstack([state.xb, ref[:2]]), np.vstack([ref, ref[:2]]))  # what a live add does


def test_hit_metadata_is_the_catalog_row_as_to_dict_gives_it() -> None:
    cat = pd.DataFrame(
        {
            "video_id": ["a", "b", "c"],
            "title": ["x", None, "z"],
            "score": [1.5, np.nan, 2.0],
            "count": np.array([1, 2, 3], np.int32),
            "flag": [True, False, True],
            "any": pd.Series([{"k": 1}, "s", 3], dtype=object),
            "when": pd.to_datetime(["2020-01-01", None, "2021-01-01"]),
            "lang": pd.array(["en", None, "fr"], dtype="string"),
            "views": pd.array([1, None, 3], dtype="Int64"),
            "rating": pd.array([1.5, None, 3.0], dtype="Float64"),
            "kind": pd.Categorical(["u", "v", None]),
        }
    )
    cols = [c for c in cat.columns if c != "video_id"]
    readers = column_readers(cat, cols)
    for i, want in enumerate(cat[cols].to_dict("records")):
        got = {c: native(col[i]) for c, col in readers.items()}
        bad = {c: (got[c], want[c]) for c in cols if not _same(got[c], want[c])}
        assert not bad, f"row {i}: {bad}"


def test_bundle_arrays_are_mapped_read_only_plain_arrays(bundle: Path) -> None:
    """Mapped (shared between workers), but as plain ndarrays: np.memmap's indexing costs ~30 us a call."""
    from multimodal_rec.bundle import load_bundle

    b = load_bundle(bundle, mmap=True)
    for name in ("embeddings", "content", "text", "text_features"):
        x = getattr(b, name)
        if x is None:
            continue
        assert type(x) is np.ndarray and not x.flags.writeable, name
        assert isinstance(x.base, np.memmap), f"{name} is not backed by the file mapping"
    assert type(load_bundle(bundle, mmap=False).embeddings) is np.ndarray
