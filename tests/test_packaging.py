"""The package as a user installs it: a wheel built from the tree, installed outside the repo, ships its presets.

Catches what an editable install hides: package data left out of the wheel (the presets), a subpackage without
``__init__.py``, a path computed from the repo layout. Runs ``mmrec`` as ``python -m multimodal_rec.cli`` with only
the installed copy importable (the virtualenv's site-packages still provides torch and the other dependencies).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRESETS = {"tiny", "small", "base"}


def _run(args: list[str], cwd: Path, target: Path, timeout: float = 300) -> str:
    """Run ``python ARGS`` from ``cwd`` with only ``target`` added to the import path; its stdout."""
    env = {**os.environ, "PYTHONPATH": str(target)}
    res = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert res.returncode == 0, f"{args} failed ({res.returncode}):\n{res.stderr[-3000:]}"
    return res.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this tree installed into a fresh folder (built from a copy: no build/ or egg-info in the repo)."""
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools in the virtualenv")
    root = tmp_path_factory.mktemp("packaging")
    src, dist, target = root / "src", root / "dist", root / "target"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("multimodal_rec", "encoders"):
        shutil.copytree(REPO / name, src / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip"]
    offline = ["-q", "--disable-pip-version-check", "--no-index", "--no-deps"]  # this tree only: no registry
    build = [*pip, "wheel", *offline, "--no-build-isolation", "-w", str(dist), str(src)]
    subprocess.run(build, check=True, timeout=300)
    (wheel,) = dist.glob("multimodal_rec-*.whl")
    with zipfile.ZipFile(wheel) as z:
        assert {f"multimodal_rec/configs/{p}.yaml" for p in PRESETS} <= set(z.namelist())
    subprocess.run([*pip, "install", *offline, "--target", str(target), str(wheel)], check=True, timeout=300)
    return target


def test_the_installed_copy_is_the_one_imported(installed: Path, tmp_path: Path) -> None:
    out = _run(["-c", "import json, sys, multimodal_rec, encoders; print(json.dumps(["
                "multimodal_rec.__file__, encoders.__file__, sys.path]))"], tmp_path, installed)  # fmt: skip
    pkg, enc, path = json.loads(out)
    assert Path(pkg).is_relative_to(installed) and Path(enc).is_relative_to(installed)
    assert REPO not in {Path(p or tmp_path).resolve() for p in path}


def test_presets_and_training_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    from multimodal_rec.data.synth import make_world

    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    presets = json.loads(_run(["-m", "multimodal_rec.cli", "presets", "--json"], cwd, installed))
    assert set(presets["presets"]) >= PRESETS and Path(presets["dir"]).is_relative_to(installed)

    world, run = tmp_path / "world", tmp_path / "run"
    make_world(world, videos=12, users=4, seed=0)
    argv = ["-m", "multimodal_rec.cli", "train", "--config", "tiny", "--data", str(world), "--out", str(run)]
    res = json.loads(_run([*argv, "--json", "-q"], cwd, installed))
    assert res["steps"] >= 1 and res["epochs"] == 1
    assert (run / "model.safetensors").is_file() and json.loads((run / "config.json").read_text())
