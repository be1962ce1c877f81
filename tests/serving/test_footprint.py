"""Serving stays light: loading a bundle and answering a search imports no training, Ray, plotting or decoders.

Checked in a fresh interpreter (this test process has imported everything), from ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Needed to train, encode clips, evaluate or plot; never to answer queries from a bundle.
NOT_ON_THE_SERVING_PATH = (
    "ray",
    "matplotlib",
    "decord",
    "av",
    "multimodal_rec.training",
    "multimodal_rec.encoding",
    "multimodal_rec.evaluation",
    "multimodal_rec.bench",
    "multimodal_rec.data.frames",
)

SERVE = """
import importlib.util, json, sys
from multimodal_rec import Recommender
rec = Recommender.load(sys.argv[1])
rec.search("a red circle", k=3)
rec.recommend(["a red circle"], k=3)
if importlib.util.find_spec("fastapi"):
    from fastapi.testclient import TestClient
    from multimodal_rec.serving.http import create_app
    TestClient(create_app(rec)).post("/search", json={"query": "a red circle", "k": 3})
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after(code: str, *args: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return set(json.loads(res.stdout.strip().splitlines()[-1]))


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in NOT_ON_THE_SERVING_PATH))


def test_load_and_search_import_nothing_of_training_or_decoding(bundle: Path) -> None:
    assert _heavy(_modules_after(SERVE, str(bundle))) == []


def test_importing_the_package_imports_no_torch() -> None:
    mods = _modules_after("import json, sys, multimodal_rec; print(json.dumps(sorted(sys.modules)))")
    assert not {"torch", "faiss", "transformers", "pandas"} & mods
