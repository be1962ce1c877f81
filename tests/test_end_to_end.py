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
    hits = rec.search("a red circle moving left", k=5, mode="vector")  # the default is hybrid: the world has titles
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
    assert {"title", "color", "shape", "motion"} <= set(hits[0].metadata)
    # Scores are cosine similarities against the stored embeddings.
    xq = rec.encode_queries(["a red circle moving left"])
    row = rec.video_ids.index(hits[0].video_id)
    assert abs(float(xq[0] @ rec.embeddings[row]) - hits[0].score) < 1e-4


def test_embeddings_are_unit_norm_and_deterministic(bundle: Path, trained: Path, world: Path, tmp_path: Path) -> None:
    from multimodal_rec.encoding import encode_catalog

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


def _rank_among(scores: np.ndarray, target: int, excluded: set[int]) -> tuple[int, int]:
    """(1-based rank of ``target``, number of candidates) with ``excluded`` items removed, ties against it."""
    cand = [j for j in range(len(scores)) if j not in excluded]
    return 1 + sum(1 for j in cand if j != target and scores[j] >= scores[target]), len(cand)


def _brute_force_user_to_video(rec: Recommender, world: Path) -> tuple[dict[str, dict[str, float]], int]:
    """Leave-last-out from scratch: per user, score every video, drop the user's earlier videos, rank the last
    one; a user whose last video is among the earlier ones is left out and counted."""
    inter = pd.read_csv(world / "interactions.csv", dtype={"user_id": str, "video_id": str})
    inter = inter.sort_values(["user_id", "timestamp"], kind="stable")
    row = {v: i for i, v in enumerate(rec.video_ids)}
    users, left_out = [], 0
    for _, g in inter.groupby("user_id", sort=True):
        vids, texts = list(g["video_id"]), list(g["text"])
        if len(vids) < 2 or vids[-1] not in row:
            continue
        if vids[-1] in vids[:-1]:
            left_out += 1
            continue
        users.append((row[vids[-1]], {row[v] for v in vids[:-1]}, texts[:-1][-rec.model.cfg.user.max_history :]))
    histories = [h for _, _, h in users]
    mean_hist = [rec.encode_queries(h).mean(0) for h in histories]
    scores = {
        "user_tower": rec.user_queries(histories) @ rec.xb.T,
        "mean_history": np.stack(mean_hist) @ rec.embeddings.T,
    }
    out = {}
    for method, s in scores.items():
        rc = np.array([_rank_among(s[i], t, seen) for i, (t, seen, _) in enumerate(users)])
        r, c = rc[:, 0], rc[:, 1]
        out[method] = {
            "users": len(users),
            "recall@10": np.mean(r <= 10),
            "ndcg@10": np.mean(np.where(r <= 10, 1 / np.log2(r + 1), 0)),
            "mrr": np.mean(1 / r),
            "auc": np.mean((c - r) / (c - 1)),
            "median_rank": np.median(r),
        }
    return out, left_out


def test_evaluate_reports_every_metric(bundle: Path, world: Path, tmp_path: Path) -> None:
    from multimodal_rec.evaluation.bundle_eval import evaluate, format_report, plot_user_recall

    rec = Recommender.load(bundle)
    res = evaluate(rec, world, seeds=2)
    tv = res["text_to_video"]
    assert 0 <= tv["r@1"] <= tv["r@5"] <= tv["r@10"] <= 1 and tv["median_rank"] >= 1
    assert {"vocabulary", "paraphrase", "vocabulary_whole_catalog"} <= set(res["semantic_retrieval"])
    uv, sd = res["user_to_video"], res["user_to_video_std"]
    assert set(uv) >= {"user_tower", "popularity", "mean_history", "random", "bpr_mf", "mult_dae", "sasrec"}
    assert all(0 <= m["ndcg@10"] <= m["recall@10"] <= 1 for m in uv.values())
    assert sd["user_tower"]["ndcg@10"] == 0.0  # the bundle's model is fixed; only baselines vary with the seed
    assert sd["random"]["mrr"] > 0.0
    # values only a correct ranking gives: the same figures computed here from scratch
    ref, left_out = _brute_force_user_to_video(rec, world)
    assert res["users_target_seen"] == left_out > 0  # the fixture's small catalog has users who rewatch
    for method, figures in ref.items():
        for k, v in figures.items():
            assert abs(uv[method][k] - v) < 1e-9, (method, k, uv[method][k], v)
    # text->video: each held-out caption ranks its own video among all
    cat = pd.read_csv(world / "catalog.csv")
    caps = pd.read_csv(world / "captions.csv")
    held_out = set(cat.loc[cat["split"] == "test", "video_id"]) or set(cat["video_id"])  # all, when none is
    caps = caps[caps["video_id"].isin(held_out)]
    s = rec.encode_queries(list(caps["caption"])) @ rec.embeddings.T
    ranks = np.array([_rank_among(s[i], rec.video_ids.index(v), set())[0] for i, v in enumerate(caps["video_id"])])
    assert tv["queries"] == len(caps) and tv["r@5"] == np.mean(ranks <= 5) and tv["median_rank"] == np.median(ranks)
    report = format_report(res)
    assert "NDCG@10" in report and "±" in report and "AUC" in report and "novelty@10" in report
    assert f"{left_out} users whose target was already in their history" in report
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
