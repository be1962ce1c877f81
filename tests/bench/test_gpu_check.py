"""scripts/gpu_check.sh: the dry run (the GPU check's plumbing, run on every CI machine so the script cannot rot
unnoticed), a failing check failing the run, and the driver's pieces: verdicts, table, timeouts, flag validation."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
PATHS = [
    "environment",
    "train bf16",
    "train throughput",
    "torchrun",
    "nccl",
    "encode 720p",
    "GPU decoding",
    "FAISS GPU Flat",
    "FAISS GPU IVF",
    "Ray GPU actor",
    "CLIP zero-shot encode",
    "CLIP fine-tune",
    "serving on GPU",
]


def _load(name: str) -> ModuleType:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


@pytest.fixture(scope="module")
def gc() -> ModuleType:
    return _load("gpu_check")


def _run(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    """The shell script as a user runs it (from another directory), without the install step."""
    report = tmp_path / "report.json"
    full_env = {**os.environ, "GPU_CHECK_SKIP_SETUP": "1", "PYTHON": sys.executable, **env}
    cmd = [str(SCRIPT), *args, "--workdir", str(tmp_path / "work"), "--json", str(report)]
    res = subprocess.run(cmd, cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=240)
    return res, json.loads(report.read_text()) if report.is_file() else {}


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_the_script_is_executable_in_git() -> None:
    out = subprocess.run(["git", "ls-files", "-s", str(SCRIPT)], cwd=ROOT, capture_output=True, text=True).stdout
    assert out.startswith("100755"), out  # a fresh clone can run it
    assert os.access(SCRIPT, os.X_OK)


def test_dry_run_reports_every_gpu_path_skipped(tmp_path: Path) -> None:
    res, report = _run(tmp_path, "--dry-run")
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    rows = report["rows"]
    assert [r["path"] for r in rows] == PATHS
    assert {r["path"]: r["status"] for r in rows} == dict.fromkeys(PATHS, "SKIP"), res.stdout
    assert "| path " in res.stdout and "dry run: no GPU path ran" in res.stdout
    checked = [r for r in rows if r["figure"].startswith("dry run:") and "command line" in r["figure"]]
    assert checked and all(" 0 command lines" not in r["figure"] for r in checked)  # the command lines were checked
    assert "ids equal" in rows[PATHS.index("FAISS GPU Flat")]["figure"]  # the FAISS probe ran on the CPU
    assert (tmp_path / "work" / "world" / "catalog.csv").is_file()  # mmrec synth ran


def test_a_failing_check_fails_the_run(tmp_path: Path) -> None:
    res, report = _run(tmp_path, "--dry-run", "--only", "faiss", GPU_CHECK_FORCE_FAIL="faiss")
    assert res.returncode == 1, res.stdout + res.stderr[-2000:]
    assert {r["path"]: r["status"] for r in report["rows"]} == {
        "environment": "SKIP",
        "FAISS GPU Flat": "FAIL",
        "FAISS GPU IVF": "FAIL",
    }
    env = {**os.environ, "GPU_CHECK_SKIP_SETUP": "1", "PYTHON": sys.executable, "GPU_CHECK_FORCE_FAIL": "fiass"}
    bad = subprocess.run([str(SCRIPT), "--dry-run"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "fiass" in bad.stderr  # a typo is refused, not silently ignored


def test_loss_verdict(gc: ModuleType) -> None:
    assert gc.loss_verdict([5.0, 4.8, 4.1, 3.5, 3.0, 2.2])[0] == "PASS"
    assert gc.loss_verdict([3.0, 3.1, 3.2, 3.3, 3.4, 3.5])[0] == "FAIL"
    status, why = gc.loss_verdict([5.0, 4.0, float("nan"), 3.0, 2.0])
    assert status == "FAIL" and "non-finite" in why
    assert gc.loss_verdict([5.0, 1.0])[0] == "FAIL"  # too few logged losses say nothing


def test_run_checks_keeps_decided_rows_and_fails_the_rest(gc: ModuleType, tmp_path: Path) -> None:
    r = _load("gpu_runner")

    def half(ctx, rows) -> None:
        rows[0].status, rows[0].figure = "PASS", "fine"
        raise r.StepFailed("second step: exit 1: CUDA error")

    def buggy(ctx, rows) -> None:
        raise KeyError("e_over_d")

    checks = [
        r.Check("half", half, (("a", "first"), ("b", "second"))),
        r.Check("buggy", buggy, (("c", "third"),)),
        r.Check("blocked", half, (("d", "fourth"),)),
    ]
    ctx = r.Ctx(tmp_path, 60, gc.TINY)
    rows = r.run_checks(ctx, checks, lambda ctx, c: "not run: no GPU" if c.name == "blocked" else None, set())
    assert [(x.path, x.status) for x in rows] == [("a", "PASS"), ("b", "FAIL"), ("c", "FAIL"), ("d", "SKIP")]
    assert rows[1].figure == "second step: exit 1: CUDA error" and "driver error: KeyError" in rows[2].figure
    table = r.format_table([*rows, r.Row("e", "x", "max |diff| 0", "PASS")])
    assert len(table.splitlines()) == 2 + 5 and "max /diff/ 0" in table  # a | in a figure cannot break the table
    dry = r.Ctx(tmp_path, 60, gc.TINY, dry=True)
    quiet = r.run_checks(dry, [r.Check("q", lambda ctx, rows: None, (("q", "x"),))], lambda ctx, c: None, {"q"})
    assert quiet[0].status == "FAIL"  # forced to fail, also in the dry run


def test_a_hung_step_is_killed_with_its_children(gc: ModuleType, tmp_path: Path) -> None:
    r = _load("gpu_runner")
    ctx = r.Ctx(tmp_path, 60, gc.TINY)
    pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time; "
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        f"open({str(pid_file)!r}, 'w').write(str(c.pid)); time.sleep(120)"
    )
    t = time.monotonic()
    with pytest.raises(r.StepFailed, match="timed out"):
        ctx.run("hang", [sys.executable, "-c", code], timeout=3)
    assert time.monotonic() - t < 30
    child = int(pid_file.read_text())
    for _ in range(50):  # the orphan is reaped by init once killed
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the hung step's child process survived")
    spent = r.Ctx(tmp_path, 0, gc.TINY)
    with pytest.raises(r.StepFailed, match="time budget"):
        spent.run("late", [sys.executable, "-c", "pass"], timeout=60)


def test_validate_names_an_unknown_flag(gc: ModuleType, tmp_path: Path) -> None:
    r = _load("gpu_runner")
    ctx = r.Ctx(tmp_path, 60, gc.GPU, dry=True)
    ctx.validate(ctx.mmrec("bench", "search", "--bundle", "b", "--device", "cuda", "--queries", "5", "--json"))
    with pytest.raises(r.StepFailed, match="--no-such-flag"):
        ctx.validate(ctx.mmrec("bench", "search", "--bundle", "b", "--no-such-flag", "1"))
    with pytest.raises(r.StepFailed, match="nonsense"):
        ctx.validate(ctx.mmrec("bench", "nonsense"))
    with pytest.raises(r.StepFailed, match="--bogus"):  # through det-cli's `--` into the mmrec command line
        ctx.validate(ctx.probe("det-cli", "--", "train", "--config", "tiny", "--bogus"))
