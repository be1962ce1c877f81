"""ID-based recommenders (BPR-MF, Mult-DAE, SASRec) to compare the text-based user tower against.

Each takes integer item sequences (``train_seqs[u]``: user u's history in time order, the held-out target
not in it) and returns a dense ``[n_users, n_items]`` float32 score matrix, so the caller ranks the whole
catalog (full ranking, never sampled negatives) and decides itself whether to exclude seen items.
All train on the CPU with mini-batches; ``seed`` makes the scores reproducible and the caller's torch RNG
state is left untouched.

Early stopping (the ml-100k protocol, :mod:`multimodal_rec.evaluation.ml100k.protocol`): with ``val_targets``
(one item per user, -1 for none, never among ``train_seqs[u]``), each epoch is scored on them (NDCG@10, training
items excluded); training stops after ``patience`` epochs without a better one and the best epoch's weights score
``score_seqs`` (default ``train_seqs``: the histories the scores are for, e.g. the training histories with the
validation event put back). ``report``, a dict, receives the best epoch, its validation NDCG@10 and the epochs run.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from multimodal_rec.errors import UserError
from multimodal_rec.evaluation.ml100k.protocol import Validation, validation_ndcg

LOG = logging.getLogger(__name__)

BPR_BATCH = 1024
DAE_BATCH = 32
SASREC_BATCH = 128
SCORE_BATCH = 256


def _check(train_seqs: list[list[int]], n_items: int) -> list[np.ndarray]:
    """The sequences as int64 arrays, every id checked to lie in ``[0, n_items)``."""
    if n_items < 1:
        raise UserError(f"n_items must be >= 1, got {n_items}")
    if not train_seqs:
        raise UserError("train_seqs is empty: no users")
    seqs = [np.asarray(s, dtype=np.int64).reshape(-1) for s in train_seqs]
    for u, s in enumerate(seqs):
        if len(s) and (s.min() < 0 or s.max() >= n_items):
            raise UserError(f"user {u}: item ids must lie in [0, {n_items}), got {s.min()}..{s.max()}")
    return seqs


def _since(t0: float) -> float:
    return time.perf_counter() - t0


def _batches(n: int, size: int, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Index batches over ``range(n)``, shuffled when ``rng`` is given."""
    idx = rng.permutation(n) if rng is not None else np.arange(n)
    return [idx[i : i + size] for i in range(0, n, size)]


class _EarlyStop:
    """Validation NDCG@10 after every epoch; the best epoch's weights are kept (a deep copy of ``module``'s state)."""

    def __init__(
        self, module: nn.Module, seqs: list[np.ndarray], val_targets: np.ndarray | None, patience: int
    ) -> None:
        if val_targets is not None and len(val_targets) != len(seqs):
            raise UserError(f"val_targets has {len(val_targets)} entries for {len(seqs)} users")
        self.module, self.patience = module, patience
        self.val = None if val_targets is None else Validation(seqs, np.asarray(val_targets, dtype=np.int64))
        self.best, self.best_epoch, self.epochs, self.state = -1.0, 0, 0, None

    def stop(self, epoch: int, score: Callable[[], np.ndarray]) -> bool:
        """After epoch ``epoch`` (1-based): True when ``patience`` epochs went by without a better validation."""
        self.epochs = epoch
        if self.val is None:
            return False
        value = validation_ndcg(score(), self.val)
        if value > self.best:
            self.best, self.best_epoch = value, epoch
            self.state = copy.deepcopy(self.module.state_dict())
        return epoch - self.best_epoch >= self.patience

    def restore(self, report: dict[str, Any] | None) -> None:
        """Load the best epoch's weights (when validating) and fill ``report``."""
        if self.state is not None:
            self.module.load_state_dict(self.state)
        if report is not None:
            report.update(epochs_run=self.epochs, best_epoch=self.best_epoch or self.epochs)
            if self.val is not None:
                report["val_ndcg@10"] = self.best


# ---------------------------------------------------------------------------------------------------- BPR-MF


def _sample_negatives(
    users: np.ndarray, pos_keys: np.ndarray, n_items: int, rng: np.random.Generator, tries: int = 10
) -> np.ndarray:
    """One uniformly drawn item per user that the user has not consumed (redrawn up to ``tries`` times)."""
    neg = rng.integers(0, n_items, size=len(users))
    for _ in range(tries):
        keys = users * n_items + neg
        pos = np.searchsorted(pos_keys, keys).clip(max=len(pos_keys) - 1)
        bad = np.flatnonzero(pos_keys[pos] == keys)
        if not len(bad):
            break
        neg[bad] = rng.integers(0, n_items, size=len(bad))
    return neg


def bpr_mf(
    train_seqs: list[list[int]],
    n_items: int,
    dim: int = 64,
    epochs: int = 30,
    lr: float = 0.01,
    reg: float = 1e-4,
    seed: int = 0,
    *,
    val_targets: np.ndarray | None = None,
    patience: int = 5,
    score_seqs: list[list[int]] | None = None,
    report: dict[str, Any] | None = None,
) -> np.ndarray:
    """Matrix factorisation trained with BPR (Rendle et al. 2009): one uniform negative per positive per epoch.

    Scores are ``user · item + item bias``; the bias lets the model learn popularity cheaply. ``reg`` is the L2
    weight on the embeddings (and biases) touched by each mini-batch. Order within a history is ignored, and so
    is ``score_seqs``: a user is its learned embedding. Early stopping: the module docstring.
    """
    seqs = _check(train_seqs, n_items)
    if score_seqs is not None and len(score_seqs) != len(seqs):
        raise UserError(f"score_seqs has {len(score_seqs)} users, train_seqs {len(seqs)}")
    n_users = len(seqs)
    users = np.repeat(np.arange(n_users), [len(s) for s in seqs])
    items = np.concatenate(seqs) if len(users) else np.zeros(0, np.int64)
    pos_keys = np.unique(users * n_items + items)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = nn.ModuleDict(
            {"user": nn.Embedding(n_users, dim), "item": nn.Embedding(n_items, dim), "bias": nn.Embedding(n_items, 1)}
        )
        nn.init.normal_(m["user"].weight, std=0.1)
        nn.init.normal_(m["item"].weight, std=0.1)
        nn.init.zeros_(m["bias"].weight)
        opt = torch.optim.Adam(m.parameters(), lr=lr)
        u_all, i_all = torch.from_numpy(users), torch.from_numpy(items)

        @torch.no_grad()
        def score() -> np.ndarray:
            return (m["user"].weight @ m["item"].weight.T + m["bias"].weight.T).numpy()

        stopper = _EarlyStop(m, seqs, val_targets, patience)
        for epoch in range(epochs if len(users) else 0):
            neg_all = torch.from_numpy(_sample_negatives(users, pos_keys, n_items, rng))
            total = 0.0
            for b in _batches(len(users), BPR_BATCH, rng):
                bt = torch.from_numpy(b)
                u, i, j = m["user"](u_all[bt]), m["item"](i_all[bt]), m["item"](neg_all[bt])
                bi, bj = m["bias"](i_all[bt]).squeeze(1), m["bias"](neg_all[bt]).squeeze(1)
                x_uij = (u * (i - j)).sum(1) + bi - bj
                l2 = (u.pow(2) + i.pow(2) + j.pow(2)).sum(1) + bi.pow(2) + bj.pow(2)
                loss = -F.logsigmoid(x_uij).mean() + reg * l2.mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(b)
            LOG.debug("bpr_mf epoch %d: loss %.4f", epoch + 1, total / len(users))
            if stopper.stop(epoch + 1, score):
                break
        stopper.restore(report)
        scores = score()
    LOG.info("bpr_mf: %d users, %d items, %d epochs in %.1fs", n_users, n_items, stopper.epochs, _since(t0))
    return scores.astype(np.float32)


# -------------------------------------------------------------------------------------------------- Mult-DAE


class _MultDAE(nn.Module):
    """Liang et al. 2018's Mult-DAE: L2-normalised input, input dropout, tanh MLP encoder/decoder."""

    def __init__(self, n_items: int, hidden: int, latent: int, dropout: float) -> None:
        super().__init__()
        dims = [n_items, hidden, latent, hidden, n_items]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        self.drop = nn.Dropout(dropout)
        for layer in self.layers:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.normal_(layer.bias, std=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(F.normalize(x, dim=1))
        for k, layer in enumerate(self.layers):
            h = layer(h)
            if k < len(self.layers) - 1:
                h = torch.tanh(h)
        return h  # logits over items


def _bags(seqs: list[np.ndarray], n_items: int) -> torch.Tensor:
    """``[n_users, n_items]`` 0/1: the items of each history."""
    x = torch.zeros(len(seqs), n_items)
    for u, s in enumerate(seqs):
        x[u, torch.from_numpy(s)] = 1.0
    return x


def mult_dae(
    train_seqs: list[list[int]],
    n_items: int,
    hidden: int = 200,
    latent: int = 64,
    dropout: float = 0.5,
    epochs: int = 50,
    lr: float = 1e-3,
    seed: int = 0,
    *,
    val_targets: np.ndarray | None = None,
    patience: int = 5,
    score_seqs: list[list[int]] | None = None,
    report: dict[str, Any] | None = None,
) -> np.ndarray:
    """Mult-DAE (Liang et al. 2018, "Variational Autoencoders for Collaborative Filtering").

    Each user is a binary bag of consumed items, encoded ``n_items -> hidden -> latent -> hidden -> n_items``
    with tanh; the loss is the multinomial log-likelihood of the (undropped) bag under the softmax of the output.
    Scores are the output logits for the full, undropped history (``score_seqs``'s bag when given). Order within
    a history is ignored. Early stopping: the module docstring.
    """
    seqs = _check(train_seqs, n_items)
    n_users = len(seqs)
    x = _bags(seqs, n_items)
    x_score = x if score_seqs is None else _bags(_check(score_seqs, n_items), n_items)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _MultDAE(n_items, hidden, latent, dropout)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        active = np.flatnonzero(x.sum(1).numpy() > 0)  # users with no history carry no training signal

        @torch.no_grad()
        def score(bags: torch.Tensor = x) -> np.ndarray:
            model.eval()
            out = torch.cat([model(bags[torch.from_numpy(b)]) for b in _batches(len(bags), SCORE_BATCH)])
            return out.numpy()

        stopper = _EarlyStop(model, seqs, val_targets, patience)
        for epoch in range(epochs if len(active) else 0):
            model.train()
            total = 0.0
            for b in _batches(len(active), DAE_BATCH, rng):
                xb = x[torch.from_numpy(active[b])]
                loss = -(F.log_softmax(model(xb), dim=1) * xb).sum(1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(b)
            LOG.debug("mult_dae epoch %d: loss %.4f", epoch + 1, total / len(active))
            if stopper.stop(epoch + 1, score):
                break
        stopper.restore(report)
        scores = score(x_score)
    LOG.info("mult_dae: %d users, %d items, %d epochs in %.1fs", n_users, n_items, stopper.epochs, _since(t0))
    return scores.astype(np.float32)


# ---------------------------------------------------------------------------------------------------- SASRec


class _SASRec(nn.Module):
    """Causal self-attention over item ids (Kang & McAuley 2018), pre-LN, output tied to the item embedding."""

    def __init__(self, n_items: int, dim: int, layers: int, heads: int, max_len: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=0)  # id 0 is padding, item i is i + 1
        self.pos_emb = nn.Embedding(max_len, dim)
        nn.init.normal_(self.item_emb.weight, std=1.0 / math.sqrt(dim))
        nn.init.normal_(self.pos_emb.weight, std=1.0 / math.sqrt(dim))
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=dim, dropout=dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """``seq [B, L]`` left-padded with 0 -> hidden states ``[B, L, dim]``; :meth:`logits` scores them."""
        length = seq.shape[1]
        h = self.item_emb(seq) * math.sqrt(self.item_emb.embedding_dim) + self.pos_emb.weight[:length]
        h = self.drop(h)
        # True = may not attend: future positions and padding keys; every position may attend to itself, so
        # padding rows are never fully masked (their outputs are ignored by the loss).
        idx = torch.arange(length)
        blocked = (idx[None, :] > idx[:, None])[None] | (seq == 0)[:, None, :]
        blocked &= ~torch.eye(length, dtype=torch.bool)[None]
        return self.encoder(h, mask=blocked.repeat_interleave(self.heads, 0))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Scores ``[..., n_items]`` of every item as the next one, from hidden states ``[..., dim]``."""
        return h @ self.item_emb.weight[1:].T


def _windows(seqs: list[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) ``[W, max_len]`` in model ids (item + 1, 0 = padding), left-padded.

    Long histories are cut into consecutive windows from the end, so every position after the first is a
    target exactly once and the most recent window keeps the fullest context.
    """
    xs, ys = [], []
    for s in seqs:
        s = s + 1
        for end in range(len(s), 1, -max_len):
            chunk = s[max(0, end - max_len - 1) : end]
            x, y = np.zeros(max_len, np.int64), np.zeros(max_len, np.int64)
            x[max_len - len(chunk) + 1 :], y[max_len - len(chunk) + 1 :] = chunk[:-1], chunk[1:]
            xs.append(x)
            ys.append(y)
    if not xs:
        return np.zeros((0, max_len), np.int64), np.zeros((0, max_len), np.int64)
    return np.stack(xs), np.stack(ys)


def sasrec(
    train_seqs: list[list[int]],
    n_items: int,
    dim: int = 64,
    layers: int = 2,
    heads: int = 2,
    max_len: int = 50,
    epochs: int = 30,
    lr: float = 1e-3,
    dropout: float = 0.2,
    seed: int = 0,
    *,
    val_targets: np.ndarray | None = None,
    patience: int = 5,
    score_seqs: list[list[int]] | None = None,
    report: dict[str, Any] | None = None,
) -> np.ndarray:
    """SASRec trained for next-item prediction with full softmax (cross-entropy over every item).

    Every position of every history is a training target (histories longer than ``max_len`` are cut into
    windows). Row u of the result is the last position's logits over the user's most recent ``max_len`` items
    (of ``score_seqs[u]`` when given). Early stopping: the module docstring.
    """
    seqs = _check(train_seqs, n_items)
    if dim % heads:
        raise UserError(f"dim ({dim}) must be divisible by heads ({heads})")
    n_users = len(seqs)
    xs, ys = _windows(seqs, max_len)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _SASRec(n_items, dim, layers, heads, max_len, dropout)
        opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98))
        x_all, y_all = torch.from_numpy(xs), torch.from_numpy(ys)

        @torch.no_grad()
        def score(histories: list[np.ndarray] = seqs) -> np.ndarray:
            inputs = np.zeros((len(histories), max_len), np.int64)
            for u, s in enumerate(histories):
                tail = s[-max_len:] + 1
                inputs[u, max_len - len(tail) :] = tail
            model.eval()
            last = [model(torch.from_numpy(inputs[b]))[:, -1] for b in _batches(len(histories), SCORE_BATCH)]
            return model.logits(torch.cat(last)).numpy()

        stopper = _EarlyStop(model, seqs, val_targets, patience)
        for epoch in range(epochs if len(xs) else 0):
            model.train()
            total, count = 0.0, 0
            for b in _batches(len(xs), SASREC_BATCH, rng):
                bt = torch.from_numpy(b)
                y = y_all[bt]
                keep = y > 0  # logits only where there is a target (a fifth of ml-100k's positions are padding)
                loss = F.cross_entropy(model.logits(model(x_all[bt])[keep]), y[keep] - 1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                n = int(keep.sum())
                total, count = total + loss.item() * n, count + n
            LOG.debug("sasrec epoch %d: loss %.4f", epoch + 1, total / max(count, 1))
            if stopper.stop(epoch + 1, score):
                break
        stopper.restore(report)
        scores = score(seqs if score_seqs is None else _check(score_seqs, n_items))
    LOG.info("sasrec: %d users, %d items, %d epochs in %.1fs", n_users, n_items, stopper.epochs, _since(t0))
    return scores.astype(np.float32)
