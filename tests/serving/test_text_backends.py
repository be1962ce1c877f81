"""Query encoding (issue 18): ONNX backends agree with torch, the graph cache, stored item features, the LRU cache."""

from __future__ import annotations

import builtins
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from multimodal_rec.errors import UserError

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def own_bundle(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session bundle: the ONNX graph is cached inside it."""
    out = tmp_path_factory.mktemp("textbackends") / "bundle"
    shutil.copytree(bundle, out)
    return out


@pytest.fixture(scope="module")
def torch_rec(own_bundle: Path):
    from multimodal_rec.serving.recommender import Recommender

    return Recommender.load(own_bundle)


def _texts(rec) -> list[str]:
    return [f"{t} clip" for t in rec.catalog["title"].astype(str)[:20]] + ["a red circle moving left", "x"]


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_onnx_agrees_with_torch(own_bundle: Path, torch_rec, backend: str) -> None:
    from multimodal_rec.serving.recommender import Recommender

    rec = Recommender.load(own_bundle, text_backend=backend)
    texts = _texts(rec)
    cos = (rec.encode_queries(texts) * torch_rec.encode_queries(texts)).sum(1)
    assert cos.min() >= (0.999 if backend == "onnx" else 0.99), cos
    free = [[f"{t} clip" for t in texts[:3]]]
    u = (rec.user_queries(free, prior=False) * torch_rec.user_queries(free, prior=False)).sum(1)
    assert u.min() >= 0.98
    assert rec.query_features.backend == backend
    assert list((own_bundle / "onnx").glob(f"text-trunk-*-{'int8' if backend == 'onnx-int8' else 'fp32'}.onnx"))


def test_a_forked_worker_reopens_its_onnx_session_with_its_threads(own_bundle: Path) -> None:
    """``mmrec serve --workers N`` opens the session with one thread before the fork; each worker reopens it with
    its own pool (serving.prefork.reopen_trunk): same vectors, the pool it asked for; a torch trunk is left alone."""
    from multimodal_rec.serving.prefork import reopen_trunk
    from multimodal_rec.serving.recommender import Recommender
    from multimodal_rec.serving.text_backends import ServeConfig

    rec = Recommender.load(own_bundle, serve=ServeConfig(text_backend="onnx-int8", onnx_threads=1, query_cache=0))
    texts = _texts(rec)
    before, session = rec.encode_queries(texts), rec.query_features.trunk.session
    reopen_trunk(rec, 2)
    trunk = rec.query_features.trunk
    assert trunk.threads == 2 and trunk.session is not session
    assert trunk.session.get_session_options().intra_op_num_threads == 2
    np.testing.assert_allclose(rec.encode_queries(texts), before, atol=1e-6)
    reopen_trunk(rec, 2)
    assert rec.query_features.trunk.session is trunk.session  # already so: not reopened


def test_int8_graph_is_checked_when_written(
    own_bundle: Path, torch_rec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A recipe that fails or moves the query vectors is passed over; when none agrees, the most faithful is kept."""
    import onnx
    from onnx import numpy_helper

    from multimodal_rec.serving import onnx_trunk
    from multimodal_rec.serving.onnx_trunk import graph_path

    fp32 = graph_path(torch_rec.model, own_bundle, int8=False)

    def broken(src: Path, dst: Path) -> None:
        raise RuntimeError("no kernel for this op on this CPU")

    def noisy(src: Path, dst: Path) -> None:  # a graph whose query vectors moved: weights off by 30%
        g = onnx.load(str(src))
        for init in g.graph.initializer:
            w = numpy_helper.to_array(init)
            if w.ndim == 2 and w.dtype == np.float32 and w.shape[0] < 1000:
                noise = np.random.default_rng(0).normal(size=w.shape).astype(np.float32)
                init.CopyFrom(numpy_helper.from_array(w * (1 + 0.3 * noise), init.name))
        onnx.save(g, str(dst))

    per_tensor = ("int8 per tensor", onnx_trunk._per_tensor)
    ops = lambda p: {n.op_type for n in onnx.load(str(p)).graph.node}  # noqa: E731
    caplog.set_level(logging.INFO, logger=onnx_trunk.__name__)
    monkeypatch.setattr(onnx_trunk, "_recipes", lambda: [("broken", broken), ("noisy", noisy), per_tensor])
    onnx_trunk._quantize(torch_rec.model, fp32, tmp_path / "a.onnx")
    assert "MatMulInteger" in ops(tmp_path / "a.onnx"), "a graph that failed the check was kept"
    assert "broken unavailable here" in caplog.text and "noisy, query vectors cosine" in caplog.text
    assert not any(r.levelno >= logging.WARNING for r in caplog.records)
    monkeypatch.setattr(onnx_trunk, "_recipes", lambda: [per_tensor, ("noisy", noisy)])
    monkeypatch.setattr(onnx_trunk, "AGREEMENT", 1.5)  # none agrees: the most faithful, and a warning
    onnx_trunk._quantize(torch_rec.model, fp32, tmp_path / "b.onnx")
    assert "MatMulInteger" in ops(tmp_path / "b.onnx"), "not the most faithful graph"
    assert any(r.levelno == logging.WARNING and "int8 per tensor" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx"], "a temporary file was left behind"


def test_graph_cached_and_keyed_by_trunk_weights(own_bundle: Path, torch_rec) -> None:
    import torch

    from multimodal_rec.serving.onnx_trunk import graph_path

    first = graph_path(torch_rec.model, own_bundle, int8=False)
    mtime = first.stat().st_mtime_ns
    assert graph_path(torch_rec.model, own_bundle, int8=False) == first and first.stat().st_mtime_ns == mtime
    p = next(iter(torch_rec.model.text.trunk.parameters()))
    with torch.no_grad():
        p.add_(1.0)  # other weights: the cached graph must not be used
    try:
        other = graph_path(torch_rec.model, own_bundle, int8=False)
    finally:
        with torch.no_grad():
            p.sub_(1.0)
    assert other != first and other.is_file()
    assert not list((own_bundle / "onnx").glob(".*tmp*")), "a temporary file was left behind"


def test_read_only_bundle_caches_elsewhere(
    own_bundle: Path, torch_rec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from multimodal_rec.serving import onnx_trunk
    from multimodal_rec.serving.onnx_trunk import graph_path

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: make the check see the bundle as read-only
        real = onnx_trunk._writable
        monkeypatch.setattr(onnx_trunk, "_writable", lambda d: not str(d).startswith(str(ro)) and real(d))
    monkeypatch.setenv("MMREC_CACHE_DIR", str(tmp_path / "cache"))
    path = graph_path(torch_rec.model, ro, int8=False)
    assert path.parent == tmp_path / "cache" / "onnx" and path.is_file()
    assert not (ro / "onnx").exists()


def test_missing_onnxruntime_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from multimodal_rec.serving.onnx_trunk import require_onnx

    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(UserError, match=r'pip install "multimodal-rec\[onnx\]"'):
        require_onnx()


def test_bad_backend_is_user_error(own_bundle: Path) -> None:
    from multimodal_rec.serving.recommender import Recommender

    with pytest.raises(UserError, match="text backend must be one of"):
        Recommender.load(own_bundle, text_backend="tensorrt")


def test_known_items_skip_the_trunk(own_bundle: Path, torch_rec) -> None:
    from multimodal_rec.serving.recommender import Recommender
    from multimodal_rec.serving.text_backends import ServeConfig

    assert torch_rec.query_features.known is not None and len(torch_rec.query_features.known) > 0
    ids = list(torch_rec.video_ids[:4])
    before = torch_rec.query_features.stats()["trunk_batches"]
    fast = torch_rec.user_queries([torch_rec.resolve_history(ids).texts])
    assert torch_rec.query_features.stats()["trunk_batches"] == before, "a catalog item went through the trunk"
    slow_rec = Recommender.load(own_bundle, serve=ServeConfig(known_texts=False, query_cache=0))
    slow = slow_rec.user_queries([slow_rec.resolve_history(ids).texts])
    np.testing.assert_allclose(fast, slow, atol=1e-5)
    assert [h.video_id for h in torch_rec.recommend(ids)] == [h.video_id for h in slow_rec.recommend(ids)]


def test_bundle_without_stored_features_works(own_bundle: Path, tmp_path: Path) -> None:
    from multimodal_rec.bundle import TEXT_FEATURE_KEYS_FILE, TEXT_FEATURES_FILE
    from multimodal_rec.serving.recommender import Recommender

    old = tmp_path / "old"
    shutil.copytree(own_bundle, old)
    (old / TEXT_FEATURES_FILE).unlink()
    (old / TEXT_FEATURE_KEYS_FILE).unlink()
    rec = Recommender.load(old, verify=False)
    assert rec.query_features.known is None
    assert rec.recommend(list(rec.video_ids[:3]), k=3)
    saved = Recommender.load(rec.save(tmp_path / "saved"))  # save writes them again
    assert saved.query_features.known is not None and len(saved.query_features.known) > 0


def test_query_cache_is_bounded_and_exact() -> None:
    from multimodal_rec.serving.text_backends import ServeConfig, TextFeatures

    calls: list[list[str]] = []

    def trunk(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return np.array([[len(t), hash(t) % 97, 1.0] for t in texts], np.float32)

    f = TextFeatures(trunk, 3, ServeConfig(query_cache=2, batch_window_ms=0))
    a = f(["one", "two"])
    b = f(["two", "one"])
    np.testing.assert_array_equal(a[::-1], b)
    assert calls == [["one", "two"]], "a cached text went through the trunk again"
    f(["three"])  # evicts the least recently used ("two")
    assert len(f.cache) == 2
    f(["two"])
    assert calls[-1] == ["two"]
    off = TextFeatures(trunk, 3, ServeConfig(query_cache=0, batch_window_ms=0))
    off(["one"])
    off(["one"])
    assert len(off.cache) == 0 and calls[-2:] == [["one"], ["one"]]


@pytest.mark.parametrize(
    ("setting", "message"),
    [("nope=1", "unknown config key serve.nope"), ("query_cache=-1", "serve.query_cache must be an integer >= 0")],
)
def test_serve_refuses_bad_settings_in_one_line(
    own_bundle: Path, setting: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("uvicorn")
    from multimodal_rec.cli import main

    assert main(["serve", "--bundle", str(own_bundle), "--port", "0", "--set", setting]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
