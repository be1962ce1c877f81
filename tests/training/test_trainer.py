"""The generic trainer on a tiny text-item task: exact resume, gradient accumulation, early stopping, plots,
hard negatives / logQ, and data-parallel training with 2 CPU processes under torchrun."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from encoders import UserTowerConfig
from multimodal_rec.config import TrainConfig
from multimodal_rec.errors import UserError
from multimodal_rec.evaluation.ml100k.textrec import (
    NextItemTask,
    TextItemRecModel,
    TextRecConfig,
    default_train_config,
    history_matrix,
    score_users,
    train_textrec,
)
from multimodal_rec.training.trainer import PLOT_FILE, fit

HERE = Path(__file__).parent


def tiny_problem(seed: int = 0, users: int = 12, items: int = 30) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(items, 16)).astype(np.float32)
    seqs = [rng.integers(0, items, size=rng.integers(5, 15)) for _ in range(users)]
    return seqs, feats


def tiny_cfg(**kw) -> TextRecConfig:
    user = UserTowerConfig(input_proj=8, hidden=8, attn_dim=8, max_history=5, proj_hidden=0, dropout=0.0)
    return TextRecConfig(**{"embed_dim": 8, "user": user, "item_hidden": 0, "id_dim": 4, **kw})


def tiny_train(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 3, "batch_size": 8, "lr": 1e-2, "warmup_steps": 2, "log_every": 1, **kw})


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def test_resume_after_interruption_gives_the_same_weights(tmp_path: Path) -> None:
    seqs, feats = tiny_problem()
    user = UserTowerConfig(input_proj=8, hidden=8, attn_dim=8, max_history=5, proj_hidden=0, dropout=0.3)
    cfg = tiny_cfg(user=user)  # dropout on: the RNG state must resume too
    train_textrec(seqs, feats, cfg, tiny_train(), tmp_path / "straight")
    # interrupted inside epoch 2 (mid-epoch checkpoint), then resumed to the end
    train_textrec(seqs, feats, cfg, tiny_train(max_steps=15), tmp_path / "resumed")
    meta = json.loads((tmp_path / "resumed" / "train_state.json").read_text())
    assert meta["step"] == 15 and meta["micro"] > 0  # stopped mid-epoch
    train_textrec(seqs, feats, cfg, tiny_train(), tmp_path / "resumed", resume=True)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    init = TextItemRecModel(cfg, feats, np.ones(len(feats), bool), np.ones(len(feats))).state_dict()
    assert not torch.equal(init["user.head.net.weight"], a["user.head.net.weight"])  # it trained


def test_resume_and_overwrite_are_guarded(tmp_path: Path) -> None:
    seqs, feats = tiny_problem()
    with pytest.raises(UserError, match="nothing to resume"):
        train_textrec(seqs, feats, tiny_cfg(), tiny_train(), tmp_path / "new", resume=True)
    train_textrec(seqs, feats, tiny_cfg(), tiny_train(epochs=1), tmp_path / "run")
    with pytest.raises(UserError, match="--resume"):
        train_textrec(seqs, feats, tiny_cfg(), tiny_train(epochs=1), tmp_path / "run")


def test_gradient_accumulation_equals_one_bigger_batch(tmp_path: Path) -> None:
    seqs, feats = tiny_problem()
    train_textrec(seqs, feats, tiny_cfg(), tiny_train(epochs=1, batch_size=16, max_steps=2), tmp_path / "big")
    train_textrec(
        seqs, feats, tiny_cfg(), tiny_train(epochs=1, batch_size=8, grad_accum=2, max_steps=2), tmp_path / "acc"
    )
    a, b = weights(tmp_path / "big"), weights(tmp_path / "acc")
    # the attention scorer's output bias has an exactly-zero gradient (softmax ignores a shift): Adam turns the
    # float noise left in it into +-lr steps, so it is the one tensor that may differ
    for k in a.keys() - {"user.attn.2.bias"}:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)


def test_checkpoint_every_n_steps_and_metrics_log_and_plot(tmp_path: Path) -> None:
    seqs, feats = tiny_problem()
    out = tmp_path / "run"
    model = TextItemRecModel(tiny_cfg(), feats, np.ones(len(feats), bool), np.ones(len(feats)))
    task = NextItemTask(model, seqs, tiny_train(checkpoint_every=2, max_steps=5))
    saved: list[dict] = []
    orig = task.save
    task.save = lambda o, extra: (saved.append(dict(extra)), orig(o, extra))[1]  # type: ignore[method-assign]
    fit(task, tiny_train(checkpoint_every=2, epochs=2), out, device=torch.device("cpu"))
    steps = [s["step"] for s in saved]
    assert 2 in steps and 4 in steps  # every 2 steps inside epochs, besides the epoch ends
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and all("loss" in r and "lr" in r for r in rows)
    png = (out / PLOT_FILE).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_early_stopping_triggers_and_keeps_the_best_epoch(tmp_path: Path) -> None:
    seqs, feats = tiny_problem()
    val = np.array([s[-1] for s in seqs])
    train = [s[:-1] for s in seqs]
    # lr 0: the validation metric never improves after epoch 1, so patience 2 stops at epoch 3 of 10
    tc = tiny_train(epochs=10, lr=0.0, early_stop_metric="ndcg@10", early_stop_patience=2)
    model = TextItemRecModel(tiny_cfg(), feats, np.ones(len(feats), bool), np.ones(len(feats)))
    res = fit(NextItemTask(model, train, tc, val_targets=val), tc, tmp_path / "run", device=torch.device("cpu"))
    assert res.stopped_early and res.epochs == 3
    assert res.best is not None and "ndcg@10" in res.best
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum("val_ndcg@10" in r for r in rows) == 3
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    with pytest.raises(UserError, match="early_stop_metric"):
        tc2 = tiny_train(epochs=2, early_stop_metric="nope")
        fit(NextItemTask(model, train, tc2, val_targets=val), tc2, tmp_path / "bad", device=torch.device("cpu"))
    with pytest.raises(UserError, match="no validation metrics"):  # nothing to validate on: said at once
        fit(NextItemTask(model, train, tc), tc, tmp_path / "noval", device=torch.device("cpu"))


def test_in_batch_negatives_with_hard_negatives_and_logq(tmp_path: Path) -> None:
    seqs, feats = tiny_problem()
    cfg = tiny_cfg(negatives="batch")
    known = np.ones(len(feats), bool)
    known[[2, 7]] = False  # held out of training: never a mined negative
    counts = np.arange(1.0, len(feats) + 1)
    model = TextItemRecModel(cfg, feats, known, counts)
    with torch.no_grad():
        model.pop_weight.fill_(0.3)  # the prior enters every logit
    task = NextItemTask(model, seqs, tiny_train(hard_negatives=3))
    batch = task.batches(0)[0]
    plain = float(task.step(batch, 0)["loss"].detach())
    assert plain == pytest.approx(reference_batch_loss(model, seqs, counts, batch, task, None, logq=False), rel=1e-5)
    task.on_epoch_end(0)  # mines 3 nearest items per item from an exact index of the current item vectors
    assert task.hard is not None and task.hard.shape == (len(feats), 3)
    assert not (task.hard == torch.arange(len(feats))[:, None]).any()  # an item is not its own negative
    # brute force: each item's 3 most similar training items other than itself, by the same item vectors
    with torch.no_grad():
        items = model.item_vectors().numpy()
    for i in range(len(feats)):
        cand = np.array([j for j in np.flatnonzero(known) if j != i])
        nearest = cand[np.argsort(-(items[cand] @ items[i]))[:3]]
        assert set(task.hard[i].tolist()) == set(nearest.tolist()), i
    harder = float(task.step(batch, 0)["loss"].detach())
    assert harder > plain  # more (and closer) negatives: a harder softmax
    expected = reference_batch_loss(model, seqs, counts, batch, task, task.hard, logq=False)
    assert harder == pytest.approx(expected, rel=1e-5)
    task_q = NextItemTask(model, seqs, tiny_train(logq_correction=True))
    with_q = float(task_q.step(batch, 0)["loss"].detach())
    assert with_q != pytest.approx(plain)
    assert with_q == pytest.approx(reference_batch_loss(model, seqs, counts, batch, task_q, None, logq=True), rel=1e-5)
    m = train_textrec(seqs, feats, cfg, tiny_train(hard_negatives=3, logq_correction=True), tmp_path / "run")
    assert np.isfinite(score_users(m, seqs)).all()


def reference_batch_loss(
    model: TextItemRecModel,
    seqs: list[np.ndarray],
    counts: np.ndarray,
    batch: np.ndarray,
    task: NextItemTask,
    hard: torch.Tensor | None,
    logq: bool,
) -> float:
    """The in-batch loss from first principles: the batch's targets then their mined negatives as columns,
    logits = scale * cosine + w * log(1 + count) [- log q(item), q = smoothed target frequency], copies of a
    row's target masked, InfoNCE by brute force (tests/training/test_loss.py)."""
    from test_loss import brute_force_infonce

    targets = np.array([s[t] for s in seqs for t in range(1, len(s))])  # every position after the first
    q = (np.bincount(targets, minlength=len(model.feats)) + 1.0) / (len(targets) + len(model.feats))
    with torch.no_grad():
        hist = history_matrix(seqs, task.users[batch], task.ends[batch], model.cfg.user.max_history)
        u, _ = model.user_vectors(torch.as_tensor(hist))
        tgt = torch.as_tensor(task.targets[batch])
        cols = tgt if hard is None else torch.cat([tgt, hard[tgt].reshape(-1)])
        bias = model.pop_weight * torch.log1p(torch.as_tensor(counts))[cols]
        if logq:
            bias = bias - torch.as_tensor(np.log(q))[cols]
        keys = model.item_vectors()[cols]
        return brute_force_infonce(u, keys, model.loss.scale(), item_ids=cols, key_bias=bias).item()


def test_options_a_task_would_ignore_are_refused_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from multimodal_rec.cli import main

    # the video task mines no hard negatives: refused in one line, before any data is read or file written
    argv = ["train", "--config", "tiny", "--data", str(tmp_path / "no-data"), "--out", str(tmp_path / "run")]
    assert main([*argv, "--set", "train.hard_negatives=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.hard_negatives=2 is not supported by the video model" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()
    # the text-item task: the video task's options, a GPU, hard negatives / logQ without in-batch negatives,
    # a patience without a metric to be patient about, and keys TrainConfig does not have
    seqs, feats = tiny_problem()
    for tc, named in [
        (tiny_train(augment=0.5), "train.augment=0.5"),
        (tiny_train(w_rec=0.5), "train.w_rec=0.5"),
        (tiny_train(rec_batch_size=7), "train.rec_batch_size=7"),
        (tiny_train(device="cuda"), "train.device='cuda'"),
        (tiny_train(hard_negatives=3), "train.hard_negatives needs textrec.negatives='batch'"),
        (tiny_train(logq_correction=True), "train.logq_correction needs textrec.negatives='batch'"),
        (tiny_train(early_stop_patience=5), "train.early_stop_patience needs train.early_stop_metric"),
    ]:
        with pytest.raises(UserError, match=re.escape(named)):
            train_textrec(seqs, feats, tiny_cfg(), tc, tmp_path / "textrec")
    assert not (tmp_path / "textrec").exists()
    with pytest.raises(UserError, match=r"unknown config key train\.nope"):
        default_train_config(nope=1)


def test_unseen_items_are_scored_by_text_alone() -> None:
    _, feats = tiny_problem()
    known = np.ones(len(feats), bool)
    known[:5] = False
    model = TextItemRecModel(tiny_cfg(), feats, known, np.ones(len(feats)))
    with torch.no_grad():
        model.id_out.weight.fill_(5.0)  # huge ID vectors: would dominate wherever they are used
        v = model.item_vectors()
        text_only = model.item_vectors(use_ids=False)
    torch.testing.assert_close(v[:5], text_only[:5])
    assert not torch.allclose(v[5:], text_only[5:])


def test_cold_items_get_a_neutral_popularity_prior() -> None:
    _, feats = tiny_problem()
    known = np.ones(len(feats), bool)
    known[:5] = False
    counts = np.arange(len(feats), dtype=float)
    counts[:5] = 0
    lp = np.log1p(counts)
    model = TextItemRecModel(tiny_cfg(), feats, known, counts)
    prior = model.prior().numpy()
    assert np.allclose(prior[:5], np.median(lp[5:]), atol=1e-6) and np.allclose(prior[5:], lp[5:])
    zero = TextItemRecModel(tiny_cfg(cold_prior="zero"), feats, known, counts).prior().numpy()
    assert np.allclose(zero[:5], 0.0)


# Data parallelism: 2 ranks x batch B must train like ONE process on batch 2B (same seed, data and steps). The user
# tower pools without attention, so its attention scorer is a trainable parameter no step uses (DDP must cope).
DDP_BATCH = 4  # per rank
DDP_RUNS = (("", 1), ("_accum", 2))  # (file tag, grad_accum): the second exercises no_sync on micro-batches


def ddp_cfg() -> TextRecConfig:
    user = UserTowerConfig(input_proj=8, hidden=8, attn_dim=8, max_history=5, proj_hidden=0, dropout=0.0)
    return tiny_cfg(user=replace(user, attention=False))


def ddp_model(feats: np.ndarray) -> TextItemRecModel:
    """Popularity counts that differ per item: a uniform prior would shift every logit alike, leaving the
    prior's weight a zero gradient that Adam turns into +-lr steps from float noise."""
    return TextItemRecModel(ddp_cfg(), feats, np.ones(len(feats), bool), np.arange(1.0, len(feats) + 1))


def ddp_train(**kw) -> TrainConfig:
    return tiny_train(**{"epochs": 2, "batch_size": DDP_BATCH, **kw})


def test_ddp_two_ranks_train_like_one_process_with_twice_the_batch(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(HERE / "ddp_worker.py"),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**_env(), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    init0, init1 = weights_of(tmp_path / "init0.safetensors"), weights_of(tmp_path / "init1.safetensors")
    assert any(not torch.equal(init0[k], init1[k]) for k in init0)  # so starting equal needs rank 0's broadcast
    seqs, feats = tiny_problem()
    for tag, accum in DDP_RUNS:
        r0, r1 = weights_of(tmp_path / f"rank0{tag}.safetensors"), weights_of(tmp_path / f"rank1{tag}.safetensors")
        assert r0.keys() == r1.keys()
        for k in r0:  # the ranks train in lockstep: bit-identical
            torch.testing.assert_close(r0[k], r1[k], rtol=0, atol=0, msg=k)
        torch.manual_seed(0)  # rank 0's initial weights
        model = ddp_model(feats)
        tc = ddp_train(batch_size=2 * DDP_BATCH, grad_accum=accum)
        fit(NextItemTask(model, seqs, tc), tc, tmp_path / f"one{tag}", device=torch.device("cpu"))
        one = model.state_dict()
        assert one.keys() == r0.keys()
        for k in r0:  # each rank took half of every step's examples, and the averaged gradients were exchanged
            torch.testing.assert_close(r0[k], one[k], rtol=1e-5, atol=1e-6, msg=f"{tag or 'plain'}: {k}")
        assert any(not torch.equal(init0[k], r0[k]) for k in r0)  # it trained
        state = json.loads((tmp_path / f"run{tag}" / "train_state.json").read_text())
        assert state["step"] == json.loads((tmp_path / f"one{tag}" / "train_state.json").read_text())["step"] > 0


def weights_of(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
