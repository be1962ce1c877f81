"""``mmrec eval --dataset ml-100k`` on a tiny stand-in data set: splits, metrics, JSON shape, the PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from multimodal_rec.cli import main
from multimodal_rec.errors import UserError
from multimodal_rec.evaluation.metrics import metrics_from_ranks
from multimodal_rec.evaluation.ml100k import run as eval_ml100k
from multimodal_rec.evaluation.ml100k.run import make_split


def fake_ml100k(users: int = 20, items: int = 40, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    it = pd.DataFrame({"video_id": [str(i + 1) for i in range(items)]})
    it["text"] = [f"movie {i} genre {i % 5}" for i in range(items)]
    rows = []
    for u in range(users):
        for t, i in enumerate(rng.choice(items, size=rng.integers(6, 15), replace=False)):
            rows.append((str(u + 1), str(i + 1), 1000 * t + int(rng.integers(0, 3)) * 5000, "x"))
    inter = pd.DataFrame(rows, columns=["user_id", "video_id", "timestamp", "text"])
    return it, inter


def test_metrics_from_ranks_hand_computed() -> None:
    m = metrics_from_ranks(np.array([1, 4, 12, 60]), n_candidates=101)
    assert m["recall@10"] == 0.5 and m["recall@20"] == 0.75 and m["recall@50"] == 0.75
    assert math.isclose(m["ndcg@10"], (1 + 1 / math.log2(5)) / 4)
    assert math.isclose(m["ndcg@20"], (1 + 1 / math.log2(5) + 1 / math.log2(13)) / 4)
    assert math.isclose(m["mrr"], (1 + 1 / 4 + 1 / 12 + 1 / 60) / 4)
    assert math.isclose(m["precision@10"], 0.05)  # one relevant item: 2 hits in 4 x 10 slots
    assert m["median_rank"] == 8.0 and math.isclose(m["median_percentile"], 0.07)
    assert math.isclose(m["f1@10"], 2 / 11 / 2)  # a hit has P = 1/10, R = 1: F1 = 2/11; half the users hit
    assert math.isclose(m["auc"], 1 - (0 + 3 + 11 + 59) / 100 / 4)  # share of the 100 others ranked below


def _reference(scores: np.ndarray, seqs: list[np.ndarray], targets: np.ndarray) -> dict[str, float]:
    """Brute force, user by user: drop the user's earlier items, rank the target (ties against it), and
    take each figure from its textbook definition."""
    ranks, cands, tops = [], [], []
    for s, seq, t in zip(scores, seqs, targets, strict=True):
        cand = [i for i in range(len(s)) if i not in set(seq.tolist())]
        ranks.append(1 + sum(1 for i in cand if i != t and s[i] >= s[t]))
        cands.append(len(cand))
        tops.append(sorted(cand, key=lambda i: -s[i])[:10])
    ranks = np.array(ranks)
    return {
        "recall@10": np.mean(ranks <= 10),
        "ndcg@10": np.mean([1 / math.log2(r + 1) if r <= 10 else 0 for r in ranks]),
        "mrr": np.mean(1 / ranks),
        "auc": np.mean([(c - r) / (c - 1) for r, c in zip(ranks, cands, strict=True)]),
        "median_rank": np.median(ranks),
        "coverage@10": len(set(np.concatenate(tops).tolist())) / scores.shape[1],
    }


def test_cheap_methods_equal_a_brute_force_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mean of history and popularity on the fake data, against the ranking computed here from scratch: the
    seen items must be masked (a history item is the mean of history's favourite) and nothing else."""
    items, inter = fake_ml100k()
    feats = np.random.default_rng(0).normal(size=(len(items), 12)).astype(np.float32)
    monkeypatch.setattr("multimodal_rec.evaluation.ml100k.movielens.load_ml100k", lambda: (items, inter))
    monkeypatch.setattr("multimodal_rec.evaluation.ml100k.textrec.text_features", lambda texts: feats[: len(texts)])
    res = eval_ml100k.evaluate_ml100k(seeds=1, methods=["mean_history", "popularity"], jobs=1)["results"]
    sp = make_split(inter, items, seed=0, split="loo")
    seqs = [sp.seqs[u] for u in sp.users]
    assert all(len(s) <= 20 for s in seqs)  # the history window holds every earlier movie
    x = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    mean = np.stack([x[s].mean(0) for s in seqs])
    counts = np.zeros(len(items))
    for s in sp.seqs:
        for i in s:
            counts[i] += 1  # training interactions; the seed's first draw breaks popularity's ties
    pop = counts + 1e-6 * np.random.default_rng(0).random(len(items))
    for method, scores in (("mean_history", mean @ x.T), ("popularity", np.tile(pop, (len(seqs), 1)))):
        ref = _reference(scores, seqs, sp.targets)
        for k, v in ref.items():
            assert math.isclose(res[method][k]["mean"], v, rel_tol=1e-9), (method, k)
    assert res["popularity"]["users"]["mean"] == len(sp.users)


def test_leave_last_out_split_holds_out_each_users_last_event() -> None:
    items, inter = fake_ml100k()
    sp = make_split(inter, items, seed=0, split="loo")
    full = eval_ml100k.user_sequences(inter, items, 0)
    assert len(sp.users) == 20
    for u, t in zip(sp.users, sp.targets, strict=True):
        assert t == full[u][-1] and list(sp.seqs[u]) == list(full[u][:-1])
    # same-timestamp events are shuffled per seed, so another seed may order ties differently
    assert any(not np.array_equal(a, b) for a, b in zip(full, eval_ml100k.user_sequences(inter, items, 1), strict=True))


def test_time_split_trains_only_on_events_before_the_cut() -> None:
    items, inter = fake_ml100k()
    sp = make_split(inter, items, seed=0, split="time")
    cut = np.quantile(inter["timestamp"], 0.9)
    row = {v: i for i, v in enumerate(items["video_id"])}
    before = {(u, row[v]) for u, v, t in zip(inter.user_id, inter.video_id, inter.timestamp, strict=True) if t < cut}
    users = sorted(inter["user_id"].unique(), key=int)
    for u, s in enumerate(sp.seqs):
        assert all((users[u], int(i)) in before for i in s)
    assert len(sp.users) > 0 and all(len(sp.seqs[u]) >= 1 for u in sp.users)
    with pytest.raises(UserError, match="unknown split"):
        make_split(inter, items, 0, "random")


def test_evaluate_end_to_end_on_a_tiny_dataset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    items, inter = fake_ml100k()
    monkeypatch.setattr("multimodal_rec.evaluation.ml100k.movielens.load_ml100k", lambda: (items, inter))
    feats = np.random.default_rng(0).normal(size=(len(items), 12)).astype(np.float32)
    monkeypatch.setattr("multimodal_rec.evaluation.ml100k.textrec.text_features", lambda texts: feats[: len(texts)])
    methods = ["user_tower", "popularity", "mean_history", "random", "bpr_mf", "user_tower_unseen_items"]
    args = ["eval", "--dataset", "ml-100k", "--seeds", "2", "--jobs", "1", "--json", "--out", str(tmp_path)]
    args += ["--methods", *methods, "--set", "train.epochs=1", "--set", "model.embed_dim=8", "--set", "recent=3"]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["dataset"] == "ml-100k" and res["seeds"] == 2
    for m in [*methods, "popularity_unseen_items", "mean_history_unseen_items"]:
        r = res["results"][m]
        for k in ("ndcg@10", "recall@10", "recall@50", "mrr", "median_rank", "auc", "f1@10", "precision@10"):
            assert {"mean", "std"} <= r[k].keys() and 0 <= r[k]["mean"] <= max(1.0, r[k]["mean"])
        assert 0 < r["coverage@10"]["mean"] <= 1 and 0 < r["diversity@10"]["mean"] <= 2 and r["novelty@10"]["mean"] > 0
    assert res["results"]["user_tower"]["users"]["mean"] == 20
    assert res["users_target_seen"] == 0  # ml-100k's user-movie pairs are unique, and so are the fake data's
    table = eval_ml100k.format_ml100k(res)
    assert "NDCG@10" in table and "AUC" in table and "novelty@10" in table and "user_tower_unseen_items" in table
    assert (tmp_path / "recall_at_k.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "results.json").read_text())["results"].keys() == res["results"].keys()


def test_bad_requests_are_one_line_errors(capsys) -> None:
    assert main(["eval", "--dataset", "ml-100k", "--methods", "nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["eval"]) == 2
    assert "--dataset ml-100k" in capsys.readouterr().err
    assert main(["eval", "--dataset", "ml-100k", "--set", "foo=1", "--methods", "random"]) == 2
    assert "--set keys" in capsys.readouterr().err


def test_time_split_with_id_baselines_scores_only_users_with_a_target(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    items, inter = fake_ml100k()
    monkeypatch.setattr("multimodal_rec.evaluation.ml100k.movielens.load_ml100k", lambda: (items, inter))
    monkeypatch.setattr(
        "multimodal_rec.evaluation.ml100k.textrec.text_features", lambda texts: np.ones((len(texts), 4), np.float32)
    )
    res = eval_ml100k.evaluate_ml100k(seeds=1, methods=["popularity", "bpr_mf"], split="time", jobs=1)
    n = make_split(inter, items, 0, "time").users.size
    assert 0 < n < 20 and all(r["users"]["mean"] == n for r in res["results"].values())
