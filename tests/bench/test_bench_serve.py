"""Serving benchmarks and the contact sheet on the tiny bundle: they run, stop by themselves and report sanely."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from multimodal_rec.cli import main
from multimodal_rec.serving.contact_sheet import LABEL_W, PAD, PLACEHOLDER, SheetRow, rows_for_hits, write_contact_sheet
from multimodal_rec.serving.recommender import Recommender


def test_bench_search_json_is_consistent(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What must hold whatever the machine's speed (no speed figure is asserted): every part was timed, the parts
    add up (the direct path's total covers each of its parts; ours, which does both, takes at least the FAISS
    part), and each overhead ratio is median ours / median (encoding + FAISS) of the very samples reported."""
    assert main(["bench", "search", "--bundle", str(bundle), "--queries", "6", "--device", "cpu", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["queries"], res["k"], res["videos"], res["device"]) == (6, 10, 48, "cpu")
    ms = 0.0005  # each figure is rounded to 0.001 ms
    for name in ("search", "recommend"):
        m = res[name]
        for part in ("end_to_end", "encode", "index_search", "raw_total"):
            assert 0 < m[part]["p50_ms"] <= m[part]["p99_ms"], (name, part)
        for q in ("p50_ms", "p99_ms"):  # raw_total = encode + search per sample: its percentiles cover both parts'
            assert m["raw_total"][q] >= max(m["encode"][q], m["index_search"][q]) - 2 * ms, (name, q)
        assert m["end_to_end"]["p50_ms"] >= m["index_search"]["p50_ms"], name
        ours, raw = m["end_to_end"]["p50_ms"], m["raw_total"]["p50_ms"]
        tol = ours / raw * (ms / ours + ms / raw) + 5e-5  # rounding of the two medians and of the ratio
        assert m["overhead_ratio"] == pytest.approx(ours / raw, rel=0, abs=tol), name
    assert res["overhead_ratio"] == res["search"]["overhead_ratio"]
    goal = res["overhead_goal"]
    assert res["pass"] == (res["search"]["overhead_ratio"] <= goal and res["recommend"]["overhead_ratio"] <= goal)


def test_bench_search_runs_the_trunk_both_ways(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The queries are catalog titles: with the stored item-text features or the query cache on, ``search`` would
    skip the trunk that the direct path runs, and the overhead ratio would compare different work (it read 0.51 on
    a GPU). The benchmark's Recommender has both off."""
    from multimodal_rec.bench.serve import bench_search

    seen = []
    real = Recommender.load

    def load(*a, **k):
        seen.append(k.get("serve"))
        return real(*a, **k)

    monkeypatch.setattr(Recommender, "load", load)
    bench_search(bundle, queries=2, device="cpu")
    assert len(seen) == 1 and seen[0] is not None
    assert seen[0].known_texts is False and seen[0].query_cache == 0


def test_bench_search_on_cuda_without_a_gpu_is_one_line(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "search", "--bundle", str(bundle), "--queries", "2", "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err  # scripts/gpu_check.sh runs it with --device cuda


def test_bench_needs_a_bundle(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "search"]) == 2
    assert "needs --bundle" in capsys.readouterr().err


def test_bench_serve_small_load_has_no_errors(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    argv = ["bench", "serve", "--bundle", str(bundle), "--requests", "12", "--concurrency", "3", "--json"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["errors"] == 0 and res["requests"] == 12 and res["throughput_rps"] > 0
    assert {p: m["requests"] for p, m in res["endpoints"].items()} == {"/search": 6, "/recommend": 6}
    assert res["server_exit_code"] is not None  # the server was stopped, not left running


def test_contact_sheet_rows_and_placeholder(bundle: Path, tmp_path: Path) -> None:
    from PIL import Image

    rec = Recommender.load(bundle)
    hits = rec.search("a red circle moving left", k=3)
    rows = rows_for_hits(rec, hits)
    assert all(r.path is not None and r.path.is_file() for r in rows)
    assert rows[0].label[0] == f"1. {hits[0].video_id}"
    rows.append(SheetRow(["4. gone", "score +0.000"], tmp_path / "missing.mp4"))
    out = write_contact_sheet(rows, tmp_path / "sheet.png", frames=4, size=32)
    img = Image.open(out)
    assert img.format == "PNG" and img.size == (LABEL_W + 4 * (32 + PAD) + PAD, 4 * (32 + 2 * PAD))
    px = np.asarray(img.convert("RGB"))
    top = 3 * (32 + 2 * PAD) + PAD
    assert tuple(px[top + 30, LABEL_W + 100]) == PLACEHOLDER  # the missing clip: a placeholder, not a crash
    assert px[PAD : PAD + 32, LABEL_W : LABEL_W + 32].std() > 0  # a real frame: not a flat fill
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sheet.png"]  # no temp file left behind


def test_search_cli_contact_sheet(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.png"
    argv = ["search", "--bundle", str(bundle), "red circle", "-k", "2", "--contact-sheet", str(out)]
    assert main([*argv, "--sheet-frames", "3", "--sheet-px", "32", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["hits"]) == 2 and out.stat().st_size > 0
    assert main([*argv[:4], "blue", "--contact-sheet", str(tmp_path / "two.png")]) == 2
    assert "exactly one" in capsys.readouterr().err
    assert main([*argv[:-1], str(tmp_path / "s.jpg")]) == 2
    assert "PNG" in capsys.readouterr().err
