"""Serving benchmarks and the contact sheet on the tiny bundle: they run, stop by themselves and report sanely."""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

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
    assert res["workers"] == 1
    if Path("/proc/self/smaps_rollup").is_file():  # Linux: the server process, read while it ran
        assert res["memory"]["total_pss_mib"] > 0 and res["memory"]["processes"][0]["rss_mib"] > 20
    assert set(res["inprocess"]) == {"concurrency_threads", "core_threads"}
    for m in res["inprocess"].values():
        assert m["errors"] == 0 and m["throughput_rps"] > 0
    assert res["inprocess"]["concurrency_threads"]["threads"] == 3
    assert res["inprocess"]["core_threads"]["torch_threads"] == 1
    assert res["inprocess_best_rps"] == max(m["throughput_rps"] for m in res["inprocess"].values())
    assert res["http_vs_inprocess"] == round(res["throughput_rps"] / res["inprocess_best_rps"], 3)
    from multimodal_rec.bench.serve import format_serve

    assert f"HTTP / in-process = {res['http_vs_inprocess']:.3f} (goal >= 0.8)" in format_serve(res)


class _FakeRec:
    """Records the Recommender calls; the search of ``bad_query`` raises, the recommend of ``empty`` finds nothing."""

    def __init__(self, bad_query: str, empty: list[str]) -> None:
        self.bad_query, self.empty, self.calls = bad_query, empty, []

    def search(self, query: str, k: int) -> list[int]:
        self.calls.append(("/search", {"query": query, "k": k}))
        if query == self.bad_query:
            raise RuntimeError("boom")
        return [1]

    def query_info(self, query: str) -> dict[str, Any]:
        return {}

    def resolve_history(self, history: list[str]) -> None:
        return None

    def recommend(self, history: list[str], k: int) -> list[int]:
        self.calls.append(("/recommend", {"history": list(history), "k": k}))
        return [] if list(history) == self.empty else [1]


def test_inprocess_runs_the_http_bodies_and_counts_errors(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the HTTP run, each in-process configuration sends exactly the bodies the server got, to a Recommender
    loaded with the server's settings; a raising call and a call without hits are errors, not a crash."""
    import torch

    from multimodal_rec.bench import serve as bs
    from multimodal_rec.bench.inprocess import cores

    sent: list[list[tuple[str, dict[str, Any]]]] = []

    async def fire(url: str, bodies: list[Any], concurrency: int, timeout: float) -> dict[str, Any]:
        sent.append(list(bodies))
        return {"lat": {"/search": [0.01]}, "errors": [], "seconds": 2.0}

    @contextlib.contextmanager
    def server(*args: Any) -> Any:
        yield "http://fake", SimpleNamespace(pid=os.getpid(), startup_s=0.1, returncode=0)

    recs: list[_FakeRec] = []

    def load(cls: type, path: Any, **kw: Any) -> _FakeRec:
        assert kw["serve"].query_cache == 0 and Path(path) == bundle  # the server's settings, the same bundle
        main = sent[-1]
        recs.append(_FakeRec(main[0][1]["query"], main[1][1]["history"]))
        return recs[-1]

    monkeypatch.setattr(bs, "fire", fire)
    monkeypatch.setattr(bs, "running_server", server)
    monkeypatch.setattr(Recommender, "load", classmethod(load))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # not 1: the one-torch-thread configuration must put it back
    try:
        res = bs.bench_serve(bundle, requests=10, concurrency=3, k=4, settings={"query_cache": 0})
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    warm, main = sent
    assert len(main) == 10 and warm == main[:6] and {b["k"] for _, b in main} == {4}
    assert len(recs) == 2  # one Recommender per configuration

    def bag(calls: list[Any]) -> Counter[str]:
        return Counter(json.dumps(c) for c in calls)

    for rec, n_threads in zip(recs, (3, cores()), strict=True):  # a warm-up like the HTTP run's, then every body
        assert bag(rec.calls[:-10]) == bag(main[: min(10, 2 * n_threads)])
        assert bag(rec.calls[-10:]) == bag(main)
    for m in res["inprocess"].values():
        assert m["errors"] == 2 and m["error_examples"] == ["/recommend: no hits", "/search: RuntimeError"]
    assert res["throughput_rps"] == 5.0 and res["http_vs_inprocess"] == round(5.0 / res["inprocess_best_rps"], 3)


def test_bench_serve_workers_reach_the_server_command(
    bundle: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from multimodal_rec.bench import serve as bs
    from multimodal_rec.errors import UserError

    started: list[list[str]] = []

    def popen(cmd: list[str], **kw: Any) -> Any:
        started.append(cmd)
        raise UserError("not started in this test")

    monkeypatch.setattr(bs.subprocess, "Popen", popen)
    argv = ["bench", "serve", "--bundle", str(bundle), "--requests", "4", "--no-inprocess"]
    assert main([*argv, "--workers", "2"]) == 2
    cmd = started[0]
    assert cmd[cmd.index("--workers") + 1] == "2" and cmd[cmd.index("--bundle") + 1] == str(bundle)
    assert main(argv) == 2 and started[1][started[1].index("--workers") + 1] == "1"  # the default
    assert main([*argv, "--workers", "0"]) == 2 and len(started) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err


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
