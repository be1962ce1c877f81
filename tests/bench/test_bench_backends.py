"""``mmrec bench search|serve --text-backend``: the variants side by side, baseline first (issue 18)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from multimodal_rec.bench.backends import BASELINE, parse_variants, variant_settings
from multimodal_rec.cli import main
from multimodal_rec.errors import UserError


def test_variants_always_start_with_the_baseline() -> None:
    assert parse_variants("onnx,torch,onnx") == [BASELINE, "onnx", "torch"]
    assert parse_variants(["before", "torch"]) == [BASELINE, "torch"]
    assert variant_settings(BASELINE)["concurrent"] is False
    with pytest.raises(UserError, match="unknown text backend"):
        parse_variants("torch,tensorrt")


def test_bench_search_variants_json(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime")
    own = tmp_path / "bundle"
    shutil.copytree(bundle, own)  # the ONNX graph is cached inside
    args = ["bench", "search", "--bundle", str(own), "--queries", "3", "--text-backend", "onnx", "--json"]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert list(res["variants"]) == [BASELINE, "onnx"]
    for name, v in res["variants"].items():
        for call in ("search", "recommend_free_text", "recommend_items"):
            assert 0 < v[call]["p50_ms"] <= v[call]["p99_ms"], (name, call)
        assert v["agreement"]["cosine_min"] >= 0.999, name
    assert res["variants"][BASELINE]["search"]["ratio"] == 1.0
    assert res["variants"]["onnx"]["features"]["backend"] == "onnx"
    assert res["variants"][BASELINE]["features"]["known_texts"] == 0  # the baseline reads no stored features
    assert res["variants"]["onnx"]["features"]["known_texts"] > 0


def test_bench_serve_variants_has_no_errors(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("httpx")
    args = ["bench", "serve", "--bundle", str(bundle), "--requests", "24", "--concurrency", "4", "--json"]
    assert main([*args, "--text-backend", "torch"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert list(res["variants"]) == [BASELINE, "torch"]
    for v in res["variants"].values():
        assert v["errors"] == 0 and v["requests"] == 24 and v["throughput_rps"] > 0
        assert all(m["errors"] == 0 for m in v["inprocess"].values())  # each variant against its own in-process run
        assert v["http_vs_inprocess"] == round(v["throughput_rps"] / v["inprocess_best_rps"], 3)
    from multimodal_rec.bench.backends import format_variants_serve

    table = format_variants_serve(res).splitlines()
    assert "HTTP/in-proc" in table[1] and len(table) == 5  # title, header, two variants, the note


def test_index_recall_is_measured_against_an_exact_scan() -> None:
    from types import SimpleNamespace

    from multimodal_rec.bench.backends import index_recall
    from multimodal_rec.index.build import build_index

    rng = np.random.default_rng(0)
    xb = rng.standard_normal((3000, 16)).astype(np.float32)
    xq = rng.standard_normal((50, 16)).astype(np.float32)
    exact = SimpleNamespace(xb=xb, index=build_index(xb, "Flat"))
    assert index_recall(exact, xq, 10, chunk=700) == 1.0  # chunked exact top k = FAISS's exact top k
    rough = SimpleNamespace(xb=xb, index=build_index(xb, "IVF64,Flat", nprobe=1))
    _, found = rough.index.search(xq, 10)
    truth = np.argsort(-(xq @ xb.T), axis=1)[:, :10]
    want = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
    assert index_recall(rough, xq, 10, chunk=700) == pytest.approx(want) and want < 0.9
