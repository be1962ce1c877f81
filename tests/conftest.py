"""Shared fixtures: CPU only, a tiny synthetic world made once per session, tiny configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # tests force the CPU


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic world: 48 clips, 12 users."""
    from multimodal_rec.data.synth import make_world

    out = tmp_path_factory.mktemp("world")
    make_world(out, videos=48, users=12, seed=1, holdout=0.34)
    return out


@pytest.fixture(scope="session")
def tiny_cfg():
    from multimodal_rec.config import load_config

    return load_config("tiny")


@pytest.fixture(scope="session")
def trained(world: Path, tmp_path_factory: pytest.TempPathFactory, tiny_cfg) -> Path:
    """A tiny model trained for one epoch on ``world``."""
    from multimodal_rec.training.train import train

    out = tmp_path_factory.mktemp("run")
    train(tiny_cfg, world, out)
    return out


@pytest.fixture(scope="session")
def bundle(trained: Path, world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from multimodal_rec.encoding import encode_catalog

    out = tmp_path_factory.mktemp("bundles") / "bundle"
    encode_catalog(trained, world / "catalog.csv", out, batch_size=16, workers=0)
    return out


@pytest.fixture(scope="module")
def one_faiss_thread():
    """FAISS on one thread for a module: tiny indexes gain nothing from threads, and OpenMP spin-waits crawl
    when other jobs hold the cores."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)
