"""The ml-100k validation protocol (issue 17): validation never touches the test targets, tuning never reads the
test split, early stopping keeps the best epoch, and the final run trains with the settings a tuning wrote."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_eval_ml100k import fake_ml100k

from multimodal_rec.cli import main
from multimodal_rec.errors import UserError
from multimodal_rec.evaluation import baselines
from multimodal_rec.evaluation.ml100k import run as eval_ml100k
from multimodal_rec.evaluation.ml100k import tune
from multimodal_rec.evaluation.ml100k.methods import fit_and_score, load_tuned, merge
from multimodal_rec.evaluation.ml100k.protocol import validation_ndcg, validation_split
from multimodal_rec.evaluation.ml100k.run import Split, make_split

TINY_TOWER = {
    "model": {"embed_dim": 8, "item_hidden": 0, "id_dim": 4, "user": {"input_proj": 8, "hidden": 8, "attn_dim": 8}},
    "train": {"epochs": 4, "early_stop_patience": 2, "batch_size": 16, "warmup_steps": 1},
    "recent": 0,
}
TINY_GRIDS = {
    "bpr_mf": [{"dim": 8, "epochs": 6, "patience": 2, "lr": lr} for lr in (0.01, 0.05)],
    "user_tower": [TINY_TOWER],
}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch):
    items, inter = fake_ml100k(users=24, items=40)
    feats = np.random.default_rng(0).normal(size=(len(items), 12)).astype(np.float32)
    monkeypatch.setattr("multimodal_rec.evaluation.ml100k.movielens.load_ml100k", lambda: (items, inter))
    monkeypatch.setattr("multimodal_rec.evaluation.ml100k.textrec.text_features", lambda texts: feats[: len(texts)])
    return items, inter, feats


@pytest.mark.parametrize("split", ["loo", "time"])
def test_validation_targets_are_never_test_targets(fake, split: str) -> None:
    """Each user's validation target is their last *training* event: a different event from the test target,
    never in the validation history, and history + validation target is exactly the training history."""
    items, inter, _ = fake
    for seed in range(3):
        sp = make_split(inter, items, seed, split)
        val = validation_split(sp.seqs)
        test_of = dict(zip(sp.users.tolist(), sp.targets.tolist(), strict=True))
        assert len(val.users) > 0
        for u in range(len(sp.seqs)):
            if val.targets[u] < 0:
                assert len(sp.seqs[u]) < 2
                continue
            assert val.targets[u] != test_of.get(u, -1)
            assert val.targets[u] not in val.seqs[u]
            assert [*val.seqs[u].tolist(), int(val.targets[u])] == sp.seqs[u].tolist()


def test_validation_ndcg_excludes_training_items() -> None:
    val = validation_split([np.array([0, 1, 2]), np.array([3, 2])])  # targets: 2 and 2
    scores = np.zeros((2, 5))
    scores[0, [0, 1]] = scores[1, 3] = 9.0  # each user's seen items scored above the target: ignored
    scores[:, 2] = 5.0
    assert validation_ndcg(scores, val) == 1.0
    scores[1, 4] = 6.0  # an unseen item above user 1's target: rank 2
    assert validation_ndcg(scores, val) == pytest.approx((1 + 1 / np.log2(3)) / 2)


class _SealedSplit(Split):
    """A split whose test targets raise when read."""

    @property
    def targets(self):  # type: ignore[override]
        raise AssertionError("the test targets were read")

    @targets.setter
    def targets(self, value) -> None:
        pass


@pytest.mark.usefixtures("fake")
def test_tuning_never_reads_the_test_split(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--tune on a split whose test targets raise when read; its choice is written and the final run reads it."""
    real = make_split

    def sealed(*a, **k):
        sp = real(*a, **k)
        return _SealedSplit(sp.seqs, sp.users, sp.targets)

    monkeypatch.setattr(eval_ml100k, "make_split", sealed)
    monkeypatch.setattr(tune, "GRIDS", TINY_GRIDS)
    out = tmp_path / "tuned.json"
    doc = tune.tune_ml100k(["bpr_mf", "user_tower"], jobs=1, out_file=out)
    assert json.loads(out.read_text()) == doc
    bpr = doc["methods"]["bpr_mf"]
    assert len(bpr["grid"]) == 2 and bpr["val_ndcg@10"] == max(r["val_ndcg@10"] for r in bpr["grid"])
    assert bpr["params"] in TINY_GRIDS["bpr_mf"] and 1 <= bpr["best_epoch"] <= 6
    assert "test targets never read" in doc["protocol"]
    monkeypatch.setattr(eval_ml100k, "make_split", real)
    res = eval_ml100k.evaluate_ml100k(seeds=2, methods=["bpr_mf", "user_tower"], jobs=1, tuned=out)
    for m in ("bpr_mf", "user_tower"):  # the chosen setting, for the epoch count validation chose, on every seed
        assert res["settings"][m]["params"] == doc["methods"][m]["params"]
        assert res["settings"][m]["epochs_run"] == [doc["methods"][m]["best_epoch"]] * 2


@pytest.mark.parametrize("method", ["bpr_mf", "mult_dae", "sasrec"])
def test_early_stopping_keeps_the_best_epoch(method: str) -> None:
    """Scores after early stopping equal those of a plain run of exactly the best epoch count: the best epoch's
    weights are restored (not the last ones), and validating changes nothing in the training itself."""
    rng = np.random.default_rng(0)
    seqs = [rng.choice(30, size=12, replace=False) for _ in range(25)]
    val = validation_split(seqs)
    small = {"bpr_mf": {"dim": 8, "lr": 0.05}, "mult_dae": {"hidden": 16, "latent": 8}, "sasrec": {"dim": 8}}[method]
    fn = getattr(baselines, method)
    report: dict = {}
    stopped = fn(
        val.seqs, 30, epochs=30, seed=1, val_targets=val.targets, patience=2, score_seqs=seqs, report=report, **small
    )
    assert report["epochs_run"] - report["best_epoch"] <= 2 and report["epochs_run"] <= 30
    plain = fn(val.seqs, 30, epochs=report["best_epoch"], seed=1, score_seqs=seqs, **small)
    np.testing.assert_allclose(stopped, plain, rtol=1e-5, atol=1e-5)
    scored = fn(val.seqs, 30, epochs=report["best_epoch"], seed=1, **small)  # scored on the validation histories
    assert method == "bpr_mf" or not np.allclose(scored, plain)  # score_seqs is what the scores are of


@pytest.mark.parametrize("method", ["user_tower", "sasrec"])
def test_a_run_of_the_chosen_epoch_count_retraces_the_validated_one(fake, method: str) -> None:
    """The final run trains for the epoch count validation chose, with no validation. On the validation histories
    it must land on the very weights early stopping kept (same batches, same learning-rate schedule): then the
    final run on the whole history differs from tuning only by the data it is given."""
    items, inter, feats = fake
    sp = make_split(inter, items, 0, "loo")
    tower = merge(TINY_TOWER, {"train": {"epochs": 6, "early_stop_patience": 1}})
    params = tower if method == "user_tower" else {"dim": 8, "epochs": 6, "patience": 1, "lr": 0.05}
    tuned, report = fit_and_score(method, 0, sp.seqs, feats, params)
    assert tuned.shape == (len(sp.seqs), len(items)) and np.isfinite(tuned).all()
    assert 1 <= report["best_epoch"] <= report["epochs_run"] <= 6 and 0 <= report["val_ndcg@10"] <= 1
    val = validation_split(sp.seqs)
    again, rep2 = fit_and_score(method, 0, val.seqs, feats, params, sp.seqs, epochs=report["best_epoch"])
    assert rep2["epochs_run"] == report["best_epoch"] and "val_ndcg@10" not in rep2
    np.testing.assert_allclose(again, tuned, rtol=1e-5, atol=1e-5)
    final, _ = fit_and_score(method, 0, sp.seqs, feats, params, epochs=report["best_epoch"])
    assert not np.allclose(final, tuned)  # the whole history, the validation event included, is trained on


def test_committed_settings_and_bad_files(tmp_path: Path, capsys) -> None:
    doc = load_tuned()
    assert set(tune.TUNABLE) <= set(doc["methods"])
    for m, entry in doc["methods"].items():
        assert entry["params"] in tune.GRIDS[m]  # the committed choice is one of the declared grid's settings
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="cannot read tuned settings"):
        load_tuned(bad)
    assert main(["eval", "--dataset", "ml-100k", "--tuned", str(tmp_path / "none.json"), "--methods", "bpr_mf"]) == 2
    assert "run mmrec eval --dataset ml-100k --tune first" in capsys.readouterr().err
    assert main(["eval", "--dataset", "ml-100k", "--tune", "--seeds", "2"]) == 2
    assert "--tune searches the declared grids" in capsys.readouterr().err


def test_per_user_draws_that_many_positions_afresh_each_epoch() -> None:
    """``per_user`` = k: each epoch holds k distinct positions of each user (all of a shorter history), drawn
    again each epoch, so that over the epochs every position is a target (the 20 most recent would never move)."""
    from multimodal_rec.config import TrainConfig, build_config
    from multimodal_rec.evaluation.ml100k.textrec import NextItemTask, TextItemRecModel, textrec_config

    rng = np.random.default_rng(0)
    seqs = [rng.choice(50, size=n, replace=False) for n in (30, 4, 12, 30)]
    feats = rng.normal(size=(50, 6)).astype(np.float32)
    model = TextItemRecModel(textrec_config(TINY_TOWER["model"]), feats, np.ones(50, bool), np.ones(50))
    task = NextItemTask(model, seqs, build_config(TrainConfig, {"batch_size": 1}, "train"), per_user=5)
    covered: list[set[int]] = [set() for _ in seqs]
    for epoch in range(60):
        ex = np.concatenate(task.batches(epoch))
        for u, s in enumerate(seqs):
            mine = task.ends[ex[task.users[ex] == u]]
            assert len(mine) == min(5, len(s) - 1) and len(set(mine.tolist())) == len(mine), (epoch, u)
            covered[u] |= set(mine.tolist())
    assert all(covered[u] == set(range(1, len(s))) for u, s in enumerate(seqs))
    assert not np.array_equal(np.sort(np.concatenate(task.batches(0))), np.sort(np.concatenate(task.batches(1))))
