"""Bundles and runs made by the code before the restructure (issue 11) still load and answer the same.

A pinned recipe, not a committed fixture: the package as it was at ``PINNED`` (the last commit of the flat layout)
is extracted with ``git archive`` and run in a subprocess of its own to make a tiny world, train the ``tiny`` preset
and encode the catalog; it writes its own answers to a few searches and recommendations. This process (the current
code) must then load that bundle and give the same answers, re-encode the old run into the same embeddings, and
resume the old run. Skipped where the pinned commit is not in the clone (a shallow clone).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from multimodal_rec import Recommender
from multimodal_rec.bundle import read_manifest
from multimodal_rec.cli import main

REPO = Path(__file__).resolve().parents[2]
PINNED = "7122d1d"  # "README: bench search / bench serve re-measured ...": the flat package, before 9fd508c
QUERIES = ["a red circle moving left", "green squares", "something blue growing"]

OLD_RECIPE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    old, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    import encoders, multimodal_rec
    for m in (multimodal_rec, encoders):  # the pinned code, not this checkout's
        assert Path(m.__file__).resolve().is_relative_to(old), f"{m.__name__} imported from {m.__file__}"
    from multimodal_rec.config import load_config
    from multimodal_rec.encode import encode_catalog
    from multimodal_rec.recommender import Recommender
    from multimodal_rec.synth import make_world
    from multimodal_rec.train import train

    make_world(out / "world", videos=24, users=6, seed=3)
    train(load_config("tiny"), out / "world", out / "run")
    train(load_config("tiny", {"train.epochs": 2}), out / "world", out / "run2")  # what a resume must reach
    encode_catalog(out / "run", out / "world" / "catalog.csv", out / "bundle", workers=0)
    rec = Recommender.load(out / "bundle")
    titles = [str(t) for t in rec.catalog["title"]]
    queries = json.loads(sys.argv[3]) + titles[:1]
    histories = [titles[:3], titles[5:10]]
    hits = lambda hs: [[h.video_id, h.score] for h in hs]
    answers = {
        "queries": queries,
        "histories": histories,
        "search": [hits(rec.search(q, k=5)) for q in queries],
        "recommend": [hits(rec.recommend(h, k=5)) for h in histories],
    }
    (out / "answers.json").write_text(json.dumps(answers))
    """
)


def _env(pythonpath: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(pythonpath),
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "2",
    }


@pytest.fixture(scope="module")
def old(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """world/, run/, bundle/ and answers.json, all made by the code at ``PINNED``."""
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the pinned recipe needs the code at commit " + PINNED)
    have = subprocess.run([git, "-C", str(REPO), "cat-file", "-e", f"{PINNED}^{{commit}}"], capture_output=True)
    if have.returncode != 0:
        pytest.skip(f"commit {PINNED} is not in this clone (shallow?): the pinned recipe needs it")
    src, out = tmp_path_factory.mktemp("old_src"), tmp_path_factory.mktemp("old")
    archive = subprocess.run(
        [git, "-C", str(REPO), "archive", PINNED, "multimodal_rec", "encoders", "configs"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    assert (src / "multimodal_rec" / "recommender.py").is_file()  # the flat layout
    res = subprocess.run(
        [sys.executable, "-c", OLD_RECIPE, str(src), str(out), json.dumps(QUERIES)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(src),
        cwd=out,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_old_bundle_loads_and_answers_the_same(old: Path) -> None:
    want = json.loads((old / "answers.json").read_text())
    read_manifest(old / "bundle", verify=True)  # format and every checksum accepted
    rec = Recommender.load(old / "bundle")
    assert len(rec) == 24
    assert rec.search_mode == "vector"  # titled, but made before hybrid search: the default stays what it was
    for q, hits in zip(want["queries"], want["search"], strict=True):
        got = rec.search(q, k=5)  # the default: a bundle made before hybrid search keeps vector search
        assert [h.video_id for h in got] == [v for v, _ in hits], q
        np.testing.assert_allclose([h.score for h in got], [s for _, s in hits], rtol=0, atol=1e-5)
    for hist, hits in zip(want["histories"], want["recommend"], strict=True):
        got = rec.recommend(hist, k=5)
        assert [h.video_id for h in got] == [v for v, _ in hits], hist
        np.testing.assert_allclose([h.score for h in got], [s for _, s in hits], rtol=0, atol=1e-5)


def test_new_encode_of_old_run_gives_the_old_embeddings(old: Path, tmp_path: Path) -> None:
    """The checkpoint format still loads: ``mmrec encode`` of the old run reproduces the old bundle's vectors.

    The old world's catalog has titles, which the item vector now mixes in (``encode.text_weight``, 0.5 by default):
    with ``--text-weight 0`` the item vectors are the old ones; by default the content vectors are."""
    argv = ["encode", "--model", str(old / "run"), "--catalog", str(old / "world" / "catalog.csv")]
    before = Recommender.load(old / "bundle")
    want = np.load(old / "bundle" / "embeddings.npy")
    for flags, name in ((["--text-weight", "0"], "embeddings.npy"), ([], "content.npy")):
        out = tmp_path / f"bundle{len(flags)}"
        assert main([*argv, "--out", str(out), "--workers", "0", "--quiet", *flags]) == 0
        new = Recommender.load(out)
        assert list(new.catalog["video_id"]) == list(before.catalog["video_id"])
        np.testing.assert_allclose(np.load(out / name), want, atol=1e-5)


def test_old_bundle_has_no_new_files_and_its_settings_reproduce_it(old: Path) -> None:
    """A bundle made before segments and text vectors loads with none of them; the settings it was made with are
    one segment per video, content only (what ``add_videos`` must use for it)."""
    from multimodal_rec.bundle import encode_config_of, load_bundle

    b = load_bundle(old / "bundle")
    assert b.content is None and b.text is None and b.segments is None
    assert b.segment_embeddings is None and b.segment_index is None
    enc = encode_config_of(b.manifest)
    assert enc.segment_seconds <= 0 and enc.text_weight == 0


def test_old_run_loads_and_resumes(old: Path, tmp_path: Path) -> None:
    """The run's config and weights load (what ``train --resume`` reads), and ``mmrec train --resume`` continues it."""
    import torch

    from multimodal_rec.config import load_config
    from multimodal_rec.model.checkpoint import load_model

    model, cfg = load_model(old / "run")
    assert cfg.model == load_config("tiny").model  # --config tiny --resume is accepted on this run
    bundled, _ = load_model(old / "bundle")  # the same weights, written by the old encode
    for (name, a), (_, b) in zip(model.state_dict().items(), bundled.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    run = Path(shutil.copytree(old / "run", tmp_path / "run"))
    argv = ["train", "--config", "tiny", "--data", str(old / "world"), "--out", str(run), "--resume"]
    assert main([*argv, "--set", "train.epochs=2", "--quiet"]) == 0
    # one old epoch + one new resumed epoch == two old epochs: weights, optimizer state and position all carried
    resumed, _ = load_model(run)
    straight, _ = load_model(old / "run2")
    moved = 0
    for name, p in resumed.state_dict().items():
        torch.testing.assert_close(p, straight.state_dict()[name], rtol=0, atol=1e-6, msg=name)
        moved += not torch.equal(p, model.state_dict()[name])
    assert moved  # the second epoch did train
