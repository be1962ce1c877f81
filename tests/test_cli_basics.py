"""The basics a new user reaches for: ``--version``, ``mmrec explain``, a ``--quiet`` that is quiet (no ffmpeg/decord
messages), and ``eval --json`` that still shows progress on stderr while stdout holds one JSON object."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import multimodal_rec
from multimodal_rec.cli import main
from multimodal_rec.data.frames import QUIET_ENV

LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (WARNING|ERROR) [\w.]+: ")  # main's logging format, warnings and up


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"mmrec {multimodal_rec.__version__}"


def test_explain_weighs_each_history_item(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    history = ["a red circle moving left", "blue square", "a green ball moving up"]
    assert main(["explain", "--bundle", str(bundle), "--history", *history, "--json"]) == 0
    att = json.loads(capsys.readouterr().out)["attention"]
    assert [a["text"] for a in att] == history
    assert all(0 <= a["weight"] <= 1 for a in att) and abs(sum(a["weight"] for a in att) - 1) < 1e-4
    assert main(["explain", "--bundle", str(bundle), "--history", *history]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "3 items" in lines[0] and [ln.split(None, 1)[1] for ln in lines[1:]] == history
    assert [float(ln.split()[0]) for ln in lines[1:]] == pytest.approx([a["weight"] for a in att], abs=1e-3)
    assert main(["explain", "--bundle", str(bundle), "--history", " "]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmrec explain: error:") and len(err.strip().splitlines()) == 1


def _catalog_with_broken_clips(world: Path, tmp_path: Path) -> Path:
    """Three good clips and two that decord cannot open (ffmpeg and decord's C++ log both complain on stderr)."""
    cat = pd.read_csv(world / "catalog.csv").head(3)
    cat["path"] = [str(world / p) for p in cat["path"]]
    good = Path(cat["path"][0]).read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    bad = [str(tmp_path / "truncated.mp4"), str(tmp_path / "junk.mp4")]
    broken = cat.head(2).assign(video_id=["x1", "x2"], path=bad)
    out = tmp_path / "catalog.csv"
    pd.concat([cat, broken]).to_csv(out, index=False)
    return out


def test_quiet_encode_prints_no_decoder_noise(
    trained: Path,
    world: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """File-descriptor capture: the C libraries write to fd 2 directly. Without --quiet (the control) the broken
    clips make decord/ffmpeg print; with --quiet stderr holds only our warnings (the skipped clips, with reasons)."""
    monkeypatch.delenv(QUIET_ENV, raising=False)
    caplog.set_level(logging.WARNING)
    catalog = _catalog_with_broken_clips(world, tmp_path)
    argv = ["encode", "--model", str(trained), "--catalog", str(catalog), "--workers", "0", "--batch-size", "8"]
    assert main([*argv, "--out", str(tmp_path / "loud")]) == 0
    loud = capfd.readouterr().err
    assert "ERROR opening" in loud, loud[-2000:]  # the control: these clips do make the decoders talk
    caplog.clear()
    assert main([*argv, "--out", str(tmp_path / "quiet"), "--quiet", "--json"]) == 0
    out, err = capfd.readouterr()
    assert json.loads(out)  # stdout: one JSON object
    assert all(LOG_LINE.match(ln) for ln in err.strip().splitlines()), err[-2000:]  # (pytest takes the log records)
    assert sum(r.getMessage().startswith("skipped x") for r in caplog.records) == 2  # the reasons are still given
    assert QUIET_ENV not in os.environ  # main put the environment back


def test_search_quiet_stderr_is_empty(bundle: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "--quiet", "--bundle", str(bundle), "red circle", "-k", "2"]) == 0
    out, err = capfd.readouterr()
    assert "red circle" in out and err == ""


def _fake_ml100k(users: int = 12, n_items: int = 30) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A stand-in for ml-100k (as tests/evaluation/test_eval_ml100k.py): movies as text, timestamped events."""
    rng = np.random.default_rng(0)
    ids = [str(i + 1) for i in range(n_items)]
    items = pd.DataFrame({"video_id": ids, "text": [f"movie {i}" for i in ids]})
    rows = [
        (str(u + 1), str(i + 1), 1000 * t, "x")
        for u in range(users)
        for t, i in enumerate(rng.choice(n_items, size=8, replace=False))
    ]
    return items, pd.DataFrame(rows, columns=["user_id", "video_id", "timestamp", "text"])


def test_eval_dataset_json_shows_progress_on_stderr(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    items, inter = _fake_ml100k()
    monkeypatch.setattr("multimodal_rec.evaluation.ml100k.movielens.load_ml100k", lambda: (items, inter))
    feats = np.random.default_rng(0).normal(size=(len(items), 8)).astype(np.float32)
    monkeypatch.setattr("multimodal_rec.evaluation.ml100k.textrec.text_features", lambda texts: feats[: len(texts)])
    argv = ["eval", "--dataset", "ml-100k", "--seeds", "1", "--methods", "popularity", "random", "--json"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["dataset"] == "ml-100k" and len(out.strip().splitlines()) == 1
    assert "ml-100k trainings" in err  # the progress bar, on stderr despite --json
    assert main([*argv, "--out", str(tmp_path), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["dataset"] == "ml-100k" and "ml-100k trainings" not in err


def test_help_lists_explain(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "explain" in capsys.readouterr().out
