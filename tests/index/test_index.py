"""The FAISS index against brute-force numpy; size-based choice, search parameters, persistence, mmap, bench."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from multimodal_rec.bench.index import bench_index, clustered_vectors, format_bench_index, recall_at_k
from multimodal_rec.index import build as index_mod
from multimodal_rec.index.build import (
    build_index,
    choose_factory,
    default_search_params,
    describe,
    get_search_params,
    ivf_nlist,
    read_index,
    set_search_params,
    to_gpu,
)
from multimodal_rec.index.search import exact_search, search

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _data(nb: int, d: int, nq: int = 200, n_clusters: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Clustered base and queries (same distribution), ~nb / n_clusters points per cluster."""
    return clustered_vectors(nb, d, n_clusters=n_clusters), clustered_vectors(nq, d, stream=1, n_clusters=n_clusters)


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


@pytest.mark.parametrize(
    ("factory", "nb", "d"),
    [
        ("HNSW32", 20_000, 33),
        (f"IVF{ivf_nlist(20_000)},Flat", 20_000, 65),
        (f"IVF{ivf_nlist(20_000)},PQ11x4fs,RFlat", 20_000, 33),
        ("IVF64,PQ13x8,RFlat", 5_000, 65),
        ("HNSW32", 5_000, 129),
        (f"IVF{ivf_nlist(5_000)},PQ43x4fs,RFlat", 5_000, 129),
    ],
)
def test_approximate_index_at_default_params_reaches_recall(factory: str, nb: int, d: int) -> None:
    xb, xq = _data(nb, d)
    index = build_index(xb, factory)
    assert get_search_params(index) == default_search_params(index) != {}
    _, I = search(index, xq, 10)  # noqa: E741
    _, I_ref = exact_search(xb, xq, 10)
    assert recall_at_k(I, I_ref, 10) >= 0.9


def test_auto_picks_an_approximate_index_above_the_flat_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    xb, xq = _data(10_000, 33)
    assert describe(build_index(xb))["type"].startswith("IndexFlat")
    monkeypatch.setattr(index_mod, "FLAT_MAX_NB", 1_000)
    index = build_index(xb)  # now HNSW32 at its default efSearch
    assert describe(index)["type"] == "IndexHNSWFlat" and get_search_params(index)["efSearch"] > 0
    assert recall_at_k(search(index, xq, 10)[1], exact_search(xb, xq, 10)[1], 10) >= 0.9


@pytest.mark.parametrize("d", [16, 33, 64, 65, 128, 129, 256, 257, 385, 768, 769])
def test_choose_factory_by_size_with_pq_dividing_d(d: int) -> None:
    assert choose_factory(1_000, d) == "Flat"
    assert choose_factory(index_mod.FLAT_MAX_NB - 1, d) == "Flat"
    assert choose_factory(200_000, d).startswith("HNSW")
    big = choose_factory(5_000_000, d)
    nlist = int(big.split(",")[0].removeprefix("IVF"))
    assert nlist & (nlist - 1) == 0 and 4_096 <= nlist <= 16_384  # power of two near 4 * sqrt(nb)
    if ",PQ" in big:
        m = int(big.split(",PQ")[1].split("x")[0])
        assert d % m == 0 and 2 <= m <= d // 2 and big.endswith(",RFlat")
    else:
        assert big.endswith(",Flat")
    faiss.index_factory(d, big, faiss.METRIC_INNER_PRODUCT)  # FAISS accepts the string


def test_choose_factory_falls_back_to_ivf_flat_for_prime_d() -> None:
    assert choose_factory(2_000_000, 257) == "IVF4096,Flat"
    assert choose_factory(2_000_000, 129) == "IVF4096,PQ43x4fs,RFlat"


@pytest.mark.parametrize(
    ("factory", "params"),
    [
        ("HNSW16", {"efSearch": 48}),
        ("IVF32,Flat", {"nprobe": 7}),
        ("IVF32,PQ11x4fs,RFlat", {"nprobe": 5, "k_factor": 3}),
    ],
)
def test_search_params_survive_write_and_read(tmp_path: Path, factory: str, params: dict[str, float]) -> None:
    xb, xq = _data(3_000, 33, nq=20)
    index = build_index(xb, factory, **params)
    assert get_search_params(index) == params
    path = tmp_path / "index.faiss"
    faiss.write_index(index, str(path))
    for loaded in (faiss.read_index(str(path)), read_index(path, mmap=False), read_index(path, mmap=True)):
        assert get_search_params(loaded) == params
        np.testing.assert_array_equal(search(loaded, xq, 10)[1], search(index, xq, 10)[1])


@pytest.mark.parametrize("factory", ["Flat", "IVF32,Flat", "IVF32,PQ11x4fs,RFlat", "HNSW16"])
def test_mmap_read_gives_the_same_results(tmp_path: Path, factory: str) -> None:
    xb, xq = _data(3_000, 33, nq=20)
    path = tmp_path / "index.faiss"
    faiss.write_index(build_index(xb, factory), str(path))
    D0, I0 = search(read_index(path, mmap=False), xq, 10)
    D1, I1 = search(read_index(path, mmap=True), xq, 10)
    np.testing.assert_array_equal(I0, I1)
    np.testing.assert_array_equal(D0, D1)


def test_set_search_params_rejects_unknown_names() -> None:
    index = build_index(_data(500, 8, n_clusters=10)[0], "Flat")
    with pytest.raises(ValueError, match="unknown search parameters"):
        set_search_params(index, nprobes=4)


def test_describe_reports_type_size_and_params() -> None:
    xb, _ = _data(3_000, 33, nq=1)
    info = describe(build_index(xb, "IVF32,Flat", nprobe=4))
    assert info["type"] == "IndexIVFFlat" and info["ntotal"] == 3_000 and info["d"] == 33
    assert info["nprobe"] == 4 and info["nlist"] == 32 and info["metric"] == "inner_product"
    assert 3_000 * 33 * 4 <= info["bytes"] < 2 * 3_000 * 33 * 4


@pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="FAISS sees no GPU (faiss-cpu, or CUDA_VISIBLE_DEVICES empty)")
def test_to_gpu_keeps_results() -> None:
    """The GPU copy answers like the CPU index it came from (random data: no near-ties to reorder)."""
    rng = np.random.default_rng(5)
    xb, xq = _unit(rng.normal(size=(2_000, 32))), _unit(rng.normal(size=(50, 32)))
    index = build_index(xb, "Flat")
    moved = to_gpu(index)
    assert moved is not index  # really moved, not the CPU fallback
    D, I = search(moved, xq, 10)  # noqa: E741
    D_ref, I_ref = search(index, xq, 10)
    np.testing.assert_array_equal(I, I_ref)
    np.testing.assert_allclose(D, D_ref, rtol=0, atol=1e-5)


@pytest.mark.skipif(faiss.get_num_gpus() > 0, reason="the fallback is for machines where FAISS sees no GPU")
def test_to_gpu_without_a_gpu_returns_the_cpu_index() -> None:
    index = build_index(_unit(np.random.default_rng(6).normal(size=(100, 8))), "Flat")
    assert to_gpu(index) is index


def test_bench_index_small() -> None:
    result = bench_index(sizes=(2_000,), d=33, nq=50)
    rows = result["rows"]
    assert {r["factory"] for r in rows} == {"Flat", "HNSW32", "IVF32,Flat", "IVF32,PQ11x4fs,RFlat"}
    assert all(0.0 <= r["recall"] <= 1.0 and r["bytes"] > 0 and r["qps"] > 0 for r in rows)
    defaults = [r for r in rows if r["default"]]
    assert len(defaults) == 1 and defaults[0]["factory"] == "Flat" and defaults[0]["recall"] == 1.0
    assert result["defaults_reach_target"] is True
    table = format_bench_index(result)
    assert "Flat" in table and "\n* " in table


def test_bench_index_recall_is_measured_against_exact_search() -> None:
    """Every row's recall equals recall@10 recomputed here against numpy brute force; weak settings score lower."""
    result = bench_index(sizes=(2_000,), d=16, nq=40, candidates=["flat", "ivf", "ivfpq"])
    rows = result["rows"]
    assert {r["factory"] for r in rows} == {"Flat", "IVF32,Flat", "IVF32,PQ8x4fs,RFlat"}
    xb, xq = clustered_vectors(2_000, 16), clustered_vectors(40, 16, stream=1)
    _, I_ref = exact_search(xb, xq, 10)
    for factory in ("IVF32,Flat", "IVF32,PQ8x4fs,RFlat"):
        index = build_index(xb, factory)
        for r in (r for r in rows if r["factory"] == factory):
            set_search_params(index, **r["params"])
            assert r["recall"] == pytest.approx(recall_at_k(search(index, xq, 10)[1], I_ref, 10))
    ivf = {r["params"]["nprobe"]: r["recall"] for r in rows if r["factory"] == "IVF32,Flat"}
    assert sorted(ivf) == [1, 4, 16] and ivf[1] < 1.0 and ivf[1] <= ivf[16]  # one list of 32 misses neighbours
    pq = [r for r in rows if r["factory"].endswith("RFlat")]
    assert {r["params"]["k_factor"] for r in pq} >= {1, 4, 16, 64}  # the re-rank depth is swept too
    assert [r["factory"] for r in rows if r["default"]] == ["Flat"]
    assert result["checks"] == [{"nb": 2_000, "factory": "Flat", "recall": 1.0, "pass": True}]


def test_bench_index_cli_prints_the_check(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from multimodal_rec.cli import main

    argv = ["bench", "index", "--sizes", "2000", "--dim", "16", "--nq", "20", "--candidates", "flat", "hnsw"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "PASS: default Flat at nb=2000: recall@10 1.000" in out and "HNSW32" in out and "IVF" not in out
    assert main([*argv, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["d"] == 16 and res["defaults_reach_target"] is True
    assert {r["factory"] for r in res["rows"]} == {"Flat", "HNSW32"}
    assert main(["bench", "index", "--sizes", "10"]) == 2  # too small: a one-line error
    assert "at least 1000" in capsys.readouterr().err
