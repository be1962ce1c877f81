"""Property test (issue 19): random add / remove / snapshot / reopen sequences on a LiveCatalog agree with a plain
Python dict of the catalog (video id -> vector) after every step, and after reopening from disk."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from multimodal_rec.serving.live import LiveCatalog  # noqa: E402

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 2)),
        st.tuples(st.just("remove"), st.integers(0, 2)),
        st.tuples(st.just("snapshot"), st.just(0)),
        st.tuples(st.just("reopen"), st.just(0)),
    ),
    min_size=1,
    max_size=8,
)


def _vec(i: int, d: int) -> np.ndarray:
    v = np.random.default_rng(i).standard_normal(d).astype(np.float32)
    return v / np.linalg.norm(v)


def test_live_catalog_matches_a_plain_model(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    @settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(ops=OPS)
    @example(ops=[("add", 0), ("remove", 0), ("reopen", 0)])  # the interleavings a crash must survive, always tried
    @example(ops=[("add", 1), ("snapshot", 0), ("remove", 1), ("add", 2), ("reopen", 0), ("snapshot", 0)])
    def check(ops: list[tuple[str, int]]) -> None:
        path = tmp_path_factory.mktemp("prop") / "bundle"
        shutil.copytree(bundle, path)
        live = LiveCatalog.open(path)
        d = int(live.rec.embeddings.shape[1])
        model = {v: np.asarray(live.rec.embeddings[r]) for v, r in live.rec.row_of.items()}
        try:
            for op, i in ops:
                vid = f"p{i}"
                if op == "add":
                    res = live.add([{"video_id": vid, "embedding": _vec(i, d).tolist(), "metadata": {}}])
                    assert res.added == ([] if vid in model else [vid])
                    model.setdefault(vid, _vec(i, d))
                elif op == "remove" and vid in model:
                    assert live.remove([vid]) == 1
                    del model[vid]
                elif op == "snapshot":
                    live.snapshot()
                elif op == "reopen":  # as after a crash: whatever is on disk
                    live.close()
                    live = LiveCatalog.open(path)
                got = {v: np.asarray(live.rec.embeddings[r]) for v, r in live.rec.row_of.items()}
                assert got.keys() == model.keys(), (op, vid)
                assert all(np.allclose(got[v], model[v], atol=1e-6) for v in model)
        finally:
            live.close()
            shutil.rmtree(path.parent, ignore_errors=True)

    check()
