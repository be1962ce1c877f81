"""The FAISS index against brute-force numpy."""

from __future__ import annotations

import numpy as np

from multimodal_rec.index import build_index, exact_search, search


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_flat_index_equals_numpy_brute_force() -> None:
    rng = np.random.default_rng(0)
    xb, xq = _unit(rng.normal(size=(500, 32))), _unit(rng.normal(size=(20, 32)))
    D, I = search(build_index(xb, "Flat"), xq, 10)  # noqa: E741
    D_ref, I_ref = exact_search(xb, xq, 10)
    np.testing.assert_array_equal(I, I_ref)
    np.testing.assert_allclose(D, D_ref, rtol=1e-5, atol=1e-5)


def test_k_larger_than_catalog_returns_everything() -> None:
    xb = _unit(np.random.default_rng(1).normal(size=(3, 8)))
    D, I = search(build_index(xb), xb[:1], 10)  # noqa: E741
    assert sorted(I[0].tolist()) == [0, 1, 2]
    assert I[0, 0] == 0 and abs(D[0, 0] - 1.0) < 1e-5


def test_hnsw_recall_against_exact_on_clustered_data() -> None:
    rng = np.random.default_rng(2)
    centers = rng.normal(size=(20, 32))
    xb = _unit(centers[rng.integers(0, 20, 2000)] + 0.3 * rng.normal(size=(2000, 32)))
    xq = _unit(centers[rng.integers(0, 20, 50)] + 0.3 * rng.normal(size=(50, 32)))
    _, I = search(build_index(xb, "HNSW32"), xq, 10)  # noqa: E741
    _, I_ref = exact_search(xb, xq, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, I_ref, strict=True)])
    assert recall >= 0.9
