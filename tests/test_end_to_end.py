"""One tiny end-to-end run: synth -> train a few steps -> encode -> search / recommend / eval, plus resume."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from multimodal_rec import Recommender, UserError
from multimodal_rec.bundle import read_manifest


def test_training_writes_checkpoint_with_config(trained: Path) -> None:
    meta = json.loads((trained / "config.json").read_text())
    assert meta["format"] == 1 and meta["config"]["name"] == "tiny"
    assert (trained / "model.safetensors").stat().st_size > 0
    lines = (trained / "metrics.jsonl").read_text().splitlines()
    assert lines and "loss_tv" in json.loads(lines[-1]) and "loss_rec" in json.loads(lines[-1])


def test_bundle_layout_and_search(bundle: Path, world: Path) -> None:
    manifest = read_manifest(bundle)
    for name in ("model.safetensors", "config.json", "catalog.parquet", "embeddings.npy", "index.faiss"):
        assert name in manifest["files"]
    rec = Recommender.load(bundle)
    assert len(rec) == len(pd.read_csv(world / "catalog.csv"))
    hits = rec.search("a red circle moving left", k=5)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
    assert {"title", "color", "shape", "motion"} <= set(hits[0].metadata)
    # Scores are cosine similarities against the stored embeddings.
    xq = rec.encode_queries(["a red circle moving left"])
    row = rec.video_ids.index(hits[0].video_id)
    assert abs(float(xq[0] @ rec.embeddings[row]) - hits[0].score) < 1e-4


def test_embeddings_are_unit_norm_and_deterministic(bundle: Path, trained: Path, world: Path, tmp_path: Path) -> None:
    from multimodal_rec.encoding.job import encode_catalog

    xb = np.load(bundle / "embeddings.npy")
    np.testing.assert_allclose(np.linalg.norm(xb, axis=1), 1.0, atol=1e-4)
    again = encode_catalog(trained, world / "catalog.csv", tmp_path / "b2", batch_size=7, workers=1)
    np.testing.assert_allclose(np.load(again.bundle / "embeddings.npy"), xb, atol=1e-5)


def test_recommend_excludes_and_explains(bundle: Path) -> None:
    rec = Recommender.load(bundle)
    history = ["a red ball moving left", "red dots going left"]
    hits = rec.recommend(history, k=5)
    assert len(hits) == 5
    banned = [hits[0].video_id, hits[1].video_id]
    again = rec.recommend(history, k=5, exclude=banned)
    assert len(again) == 5 and not {h.video_id for h in again} & set(banned)
    why = rec.explain(history)
    assert [t for t, _ in why] == history and abs(sum(w for _, w in why) - 1) < 1e-5


def test_bad_queries_are_user_errors(bundle: Path) -> None:
    rec = Recommender.load(bundle)
    for bad in (
        lambda: rec.search("", k=3),
        lambda: rec.search("   "),
        lambda: rec.search("x", k=0),
        lambda: rec.search("x", k=10**6),
        lambda: rec.recommend([], k=3),
        lambda: rec.recommend("text"),
    ):
        with pytest.raises(UserError):
            bad()


def test_tampered_bundle_is_refused(bundle: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    arr = np.load(copy / "embeddings.npy")
    arr[0, 0] += 0.5
    np.save(copy / "embeddings.npy", arr)
    with pytest.raises(UserError, match="checksum"):
        Recommender.load(copy)


def test_failed_bundle_write_keeps_previous_bundle(bundle: Path, tmp_path: Path) -> None:
    import shutil

    from multimodal_rec.bundle import write_bundle

    target = tmp_path / "b"
    shutil.copytree(bundle, target)
    before = (target / "bundle.json").read_text()

    def boom(tmp: Path) -> dict:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_bundle(target, boom)
    assert (target / "bundle.json").read_text() == before
    assert not list(tmp_path.glob(".b.tmp-*")), "temporary directory left behind"


def test_evaluate_reports_every_metric(bundle: Path, world: Path, tmp_path: Path) -> None:
    from multimodal_rec.evaluation.bundle_eval import evaluate, format_report, plot_user_recall

    res = evaluate(Recommender.load(bundle), world, seeds=2)
    tv = res["text_to_video"]
    assert 0 <= tv["r@1"] <= tv["r@5"] <= tv["r@10"] <= 1 and tv["median_rank"] >= 1
    assert {"vocabulary", "paraphrase", "vocabulary_whole_catalog"} <= set(res["semantic_p@5"])
    uv, sd = res["user_to_video"], res["user_to_video_std"]
    assert set(uv) >= {"user_tower", "popularity", "mean_history", "random", "bpr_mf", "mult_dae", "sasrec"}
    assert all(0 <= m["ndcg@10"] <= m["recall@10"] <= 1 for m in uv.values())
    assert sd["user_tower"]["ndcg@10"] == 0.0  # the bundle's model is fixed; only baselines vary with the seed
    assert sd["random"]["mrr"] > 0.0
    assert "NDCG@10" in format_report(res) and "±" in format_report(res)
    assert plot_user_recall(res, tmp_path / "r.png") and (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_continues_and_refuses_overwrite(world: Path, trained: Path, tiny_cfg, tmp_path: Path) -> None:
    """Interrupted mid-epoch, then resumed: the same weights, bit for bit, as the uninterrupted ``trained`` run
    (same preset, same data); a finished run then extends by an epoch."""
    import copy

    from safetensors.torch import load_file

    from multimodal_rec.training.train import train

    cfg = copy.deepcopy(tiny_cfg)
    steps = json.loads((trained / "train_state.json").read_text())["step"]
    out = tmp_path / "run"
    cfg.train.max_steps = steps // 2
    first = train(cfg, world, out)
    assert first.steps == steps // 2 and json.loads((out / "train_state.json").read_text())["micro"] > 0
    with pytest.raises(UserError, match="--resume"):
        train(cfg, world, out)
    cfg.train.max_steps = 0
    second = train(cfg, world, out, resume=True)
    assert second.steps == steps
    a, b = load_file(str(trained / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:  # weights and BatchNorm statistics; dropout draws replayed from the saved RNG state
        assert torch.equal(a[k], b[k]), k
    cfg.train.epochs = 2
    third = train(cfg, world, out, resume=True)
    assert third.steps == 2 * steps
    assert json.loads((out / "config.json").read_text())["epoch"] == 2


def test_recommend_score_is_cosine_plus_popularity_prior(bundle: Path) -> None:
    rec = Recommender.load(bundle)
    history = ["a red ball moving left", "red dots going left"]
    hit = rec.recommend(history, k=1)[0]
    u, _ = rec.encode_histories([history])
    row = rec.video_ids.index(hit.video_id)
    count = rec.catalog["train_interactions"].iloc[row]
    expected = float(u[0] @ rec.embeddings[row]) + rec.prior_coef * np.log1p(count)
    assert abs(hit.score - expected) < 1e-4
    assert np.abs(rec.xb[:, -1]).max() < 0.2, "the prior column must stay small next to unit vectors"


def test_frozen_text_features_cache_only_when_enabled(tiny_cfg) -> None:
    """Training caches a frozen trunk's features per string; serving must not keep every query it sees."""
    import copy

    import torch

    from multimodal_rec.model.multimodal import create_model

    cfg = copy.deepcopy(tiny_cfg.model)
    cfg.text.trainable_layers = 0
    model = create_model(cfg).eval()
    texts = ["a red ball", "a blue box", "a red ball"]
    model.cache_text_features = False
    uncached = model.text_features(texts)
    assert model._feature_cache == {}
    model.cache_text_features = True
    cached = model.text_features(texts)
    assert set(model._feature_cache) == {"a red ball", "a blue box"}
    assert torch.allclose(cached, uncached, atol=1e-6) and cached.shape == (3, model.text.feat_dim)


def test_loaded_recommender_keeps_no_query_features(bundle: Path) -> None:
    rec = Recommender.load(bundle)
    assert rec.model.cache_text_features is False
    rec.search("a query that is only seen once", k=3)
    assert rec.model._feature_cache == {}


def test_training_is_the_same_whether_the_frame_cache_is_built_or_read(world: Path, tiny_cfg, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from multimodal_rec.training.train import train

    train(tiny_cfg, world, tmp_path / "built", cache_dir=tmp_path / "cache")  # decodes into a new cache
    train(tiny_cfg, world, tmp_path / "read", cache_dir=tmp_path / "cache")  # reads it
    a, b = (
        load_file(str(tmp_path / "built" / "model.safetensors")),
        load_file(str(tmp_path / "read" / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
