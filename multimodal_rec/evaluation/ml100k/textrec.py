"""Next-item recommendation over *text* items (no video), e.g. MovieLens: the same user tower, trained with the
generic trainer.

Items are encoded by the text tower (frozen MiniLM features, computed once, + a trained projection head),
plus optionally a learned ID embedding for items seen in training: a content + behaviour hybrid. An item never
seen in training has no ID embedding and falls back to its text alone, so it is still ranked. The user tower
(BiLSTM + attention, ``encoders.UserTower``) reads the history items' text features (+ their ID embeddings).

Numpy in, numpy out at the edges: ``seqs`` are lists of item-row arrays (oldest first), scores are
``[n_users, n_items]``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from encoders import UserTowerConfig
from encoders.heads import ProjectionHead
from encoders.user import UserTower
from multimodal_rec.config import TrainConfig, build_config, refuse_unsupported
from multimodal_rec.errors import UserError
from multimodal_rec.evaluation.ml100k.protocol import VAL_METRIC, Validation, validation_ndcg
from multimodal_rec.model.checkpoint import load_module, save_module
from multimodal_rec.model.loss import InfoNCELoss
from multimodal_rec.model.text_features import text_features

LOG = logging.getLogger(__name__)
CONFIG_FILE = "textrec.json"  # beside model.safetensors: the TextRecConfig and the position in the run
# TrainConfig options of the video task that this one has no use for: refused by name, not ignored
UNSUPPORTED_TRAIN_OPTIONS = (
    "rec_batch_size",
    "trunk_lr",
    "w_text_video",
    "w_rec",
    "min_history",
    "rec_trains_video",
    "augment",
    "num_workers",
    "decode_backend",
)


@dataclass
class TextRecConfig:
    embed_dim: int = 128  # D of the shared space
    user: UserTowerConfig = field(
        default_factory=lambda: UserTowerConfig(
            input_proj=64, hidden=64, attn_dim=64, max_history=20, proj_hidden=0, dropout=0.2
        )
    )  # small and short: a BiLSTM step costs ~ S * hidden^2 per example on a CPU
    item_hidden: int = 256  # hidden width of the item text head (0 = linear)
    id_dim: int = 64  # learned ID embedding width for items seen in training (0 = text only, no hybrid)
    popularity_prior: bool = True  # logits add w * log(1 + training count), w learned
    init_temperature: float = 0.07  # initial softmax temperature (learnable)
    negatives: str = "all"  # "all": softmax over every training item; "batch": in-batch targets (+ mined negatives)
    id_dropout: float = 0.0  # training: each item's ID embedding is dropped with this probability, so text alone
    # must also place items well (what a cold-start item has)
    cold_prior: str = "median"  # popularity prior of items never seen in training: "median" of the seen items'
    # log-popularity (neutral: ranked by content) or "zero" (buried under every popular item)


class TextItemRecModel(nn.Module):
    """Item text features (+ IDs) and a user tower over histories of them, in one space of width D."""

    def __init__(self, cfg: TextRecConfig, feats: np.ndarray, known: np.ndarray, counts: np.ndarray) -> None:
        super().__init__()
        self.cfg = cfg
        N, H = feats.shape
        D = cfg.embed_dim
        self.register_buffer("feats", torch.as_tensor(feats, dtype=torch.float32))  # [N, H]
        self.register_buffer("known", torch.as_tensor(known, dtype=torch.bool))  # [N] seen in training
        self.register_buffer("log_pop", torch.log1p(torch.as_tensor(counts, dtype=torch.float32)))  # [N]
        self.item_head = ProjectionHead(H, D, cfg.item_hidden, cfg.user.dropout)
        self.id_in = nn.Embedding(N, cfg.id_dim) if cfg.id_dim else None
        self.id_out = nn.Embedding(N, D) if cfg.id_dim else None
        for emb in (self.id_in, self.id_out):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.02)
        self.user = UserTower(cfg.user, H + cfg.id_dim, D)
        self.loss = InfoNCELoss(cfg.init_temperature, symmetric=False)
        self.pop_weight = nn.Parameter(torch.zeros(()))

    def item_vectors(self, use_ids: bool = True) -> torch.Tensor:
        """All items ``[N, D]``, L2-normalised: text head (+ ID embedding where the item was seen in training)."""
        x = self.item_head(self.feats, normalize=False)
        if self.id_out is not None and use_ids:
            keep = self.known[:, None].to(x.dtype)
            if self.training and self.cfg.id_dropout > 0:
                keep = keep * (torch.rand_like(keep) >= self.cfg.id_dropout)
            x = x + self.id_out.weight * keep
        return F.normalize(x, dim=-1)

    def prior(self) -> torch.Tensor:
        """Per-item log-popularity the prior multiplies; items never seen in training get ``cold_prior``'s value."""
        if self.cfg.cold_prior == "zero" or not self.known.any():
            return self.log_pop
        return torch.where(self.known, self.log_pop, self.log_pop[self.known].median())

    def user_vectors(self, hist: torch.Tensor, use_ids: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """History item rows ``[B, S]`` (right-padded with -1) -> users ``[B, D]`` and attention ``[B, S]``."""
        mask = hist >= 0
        rows = hist.clamp(min=0)
        x = self.feats[rows]  # [B, S, H]
        if self.id_in is not None:
            ids = self.id_in(rows) * (self.known[rows] & mask)[..., None] * float(use_ids)  # [B, S, id_dim]
            x = torch.cat([x, ids], dim=-1)
        return self.user(x, mask)

    def logits(self, u: torch.Tensor, items: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled cosine + popularity prior of users ``[B, D]`` against item vectors (``rows`` of them, or all)."""
        s = self.loss.scale() * u @ items.t()
        if self.cfg.popularity_prior:
            lp = self.prior() if rows is None else self.prior()[rows]
            s = s + self.pop_weight * lp[None, :]
        return s


def history_matrix(seqs: list[np.ndarray], users: np.ndarray, ends: np.ndarray, S: int) -> np.ndarray:
    """``[B, S]`` item rows: the up-to-S items of ``seqs[users[b]]`` before position ``ends[b]``, right-padded -1."""
    out = np.full((len(users), S), -1, dtype=np.int64)
    for b, (u, e) in enumerate(zip(users, ends, strict=True)):
        h = seqs[u][max(0, e - S) : e]
        out[b, : len(h)] = h
    return out


def check_train_options(tc: TrainConfig, cfg: TextRecConfig) -> None:
    """Refuse, by name, the TrainConfig options this task would ignore."""
    refuse_unsupported(tc, UNSUPPORTED_TRAIN_OPTIONS, "the text-item model (mmrec eval --dataset)")
    if tc.device not in ("auto", "cpu"):
        raise UserError(f"train.device={tc.device!r} is not supported by the text-item model: it trains on the CPU")
    if cfg.negatives == "all":  # the full softmax already has every item as a negative, with no sampling bias
        for name in ("hard_negatives", "logq_correction"):
            if getattr(tc, name):
                raise UserError(f"train.{name} needs textrec.negatives='batch' (with 'all' it would be ignored)")


class NextItemTask:
    """Trainer task: every position (after the first) of every training sequence is a next-item target."""

    def __init__(
        self,
        model: TextItemRecModel,
        seqs: list[np.ndarray],
        tc: TrainConfig,
        val_targets: np.ndarray | None = None,
        recent: int = 0,
        per_user: int = 0,
    ) -> None:
        check_train_options(tc, model.cfg)
        if recent < 0 or per_user < 0:
            raise UserError(f"recent and per_user must be >= 0, got {recent} and {per_user}")
        self.model, self.seqs, self.tc, self.per_user = model, seqs, tc, per_user
        self.val_targets = val_targets  # [n_users] item row after each sequence (-1 = none): early stopping
        # recent > 0: only each user's last ``recent`` positions are targets (closest to what is predicted next)
        pairs = [(u, t) for u, s in enumerate(seqs) for t in range(max(1, len(s) - recent if recent else 1), len(s))]
        if not pairs:
            raise UserError("no training examples: every sequence has fewer than 2 items")
        self.users = np.array([p[0] for p in pairs], dtype=np.int64)
        self.ends = np.array([p[1] for p in pairs], dtype=np.int64)
        self.targets = np.array([seqs[u][t] for u, t in pairs], dtype=np.int64)
        counts = np.bincount(self.targets, minlength=len(model.feats)).astype(np.float64) + 1.0
        self.log_q = torch.as_tensor(np.log(counts / counts.sum()), dtype=torch.float32)
        self.hard: torch.Tensor | None = None  # [N, hard_negatives] mined each epoch

    def batches(self, epoch: int) -> list[np.ndarray]:
        """One epoch's shuffled examples; with ``per_user``, that many of each user's positions, drawn afresh each
        epoch (every position is a target over the epochs, at the cost of ``per_user`` targets per user)."""
        rng = np.random.default_rng(self.tc.seed * 1000 + epoch)
        idx = np.arange(len(self.users))
        if self.per_user:
            order = np.lexsort((rng.random(len(idx)), self.users))  # by user, random within each user
            by_user = self.users[order]
            rank = np.arange(len(idx)) - np.searchsorted(by_user, by_user, side="left")
            idx = np.sort(order[rank < self.per_user])
        perm = rng.permutation(idx)
        bs = self.tc.batch_size
        return [perm[i : i + bs] for i in range(0, len(perm) - bs + 1, bs)] or [perm]

    def step(self, batch: np.ndarray, step: int) -> dict[str, torch.Tensor]:
        m = self.model
        hist = history_matrix(self.seqs, self.users[batch], self.ends[batch], m.cfg.user.max_history)
        u, _ = m.user_vectors(torch.as_tensor(hist))
        tgt = torch.as_tensor(self.targets[batch])
        items = m.item_vectors()
        if m.cfg.negatives == "all":
            logits = m.logits(u, items).masked_fill(~m.known[None, :], float("-inf"))  # unseen items do not exist
            return {"loss": F.cross_entropy(logits, tgt)}
        cols = tgt
        if self.hard is not None:  # keys: the batch's targets, then mined neighbours of those targets
            cols = torch.cat([tgt, self.hard[tgt].reshape(-1)])
        bias = m.pop_weight * m.log_pop[cols] if m.cfg.popularity_prior else torch.zeros(len(cols))
        if self.tc.logq_correction:
            bias = bias - self.log_q[cols]
        return {"loss": m.loss(u, items[cols], item_ids=cols, key_bias=bias)}

    def param_groups(self, cfg: TrainConfig) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr": cfg.lr}]

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> None:
        h = self.tc.hard_negatives
        if h <= 0 or self.model.cfg.negatives != "batch":
            return
        import faiss

        items = np.ascontiguousarray(self.model.eval().item_vectors().numpy())
        known = np.flatnonzero(self.model.known.numpy())  # items held out of training are never negatives either
        h = min(h, len(known) - 1)
        if h <= 0:
            return
        index = faiss.IndexFlatIP(items.shape[1])  # exact index of the current vectors of the training items
        index.add(items[known])
        _, I = index.search(items, h + 1)  # noqa: E741
        I = known[I.clip(min=0)]  # noqa: E741
        hard = np.array([[j for j in row if j != i][:h] for i, row in enumerate(I)])  # drop each item itself
        self.hard = torch.as_tensor(hard, dtype=torch.int64)

    def validate(self) -> dict[str, float]:
        if self.val_targets is None:
            return {}
        val = Validation(self.seqs, self.val_targets)
        users = val.users
        scores = score_users(self.model, [self.seqs[u] for u in users])
        return {VAL_METRIC: validation_ndcg(scores, val, users)}

    def save(self, out: Path, extra: dict[str, Any]) -> None:
        save_textrec(self.model, out, extra)

    def load_weights(self, out: Path) -> None:
        load_module(self.model, out, CONFIG_FILE)


def save_textrec(model: TextItemRecModel, out: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Weights (safetensors, buffers included) + config JSON, each written atomically, format-versioned."""
    save_module(model, out, {"config": asdict(model.cfg), **(extra or {})}, CONFIG_FILE)


def textrec_config(data: dict[str, Any] | None = None) -> TextRecConfig:
    """A :class:`TextRecConfig` from a dict (unknown keys refused with their name)."""
    return build_config(TextRecConfig, data, "textrec")


@torch.no_grad()
def score_users(
    model: TextItemRecModel, seqs: list[np.ndarray], use_ids: bool = True, prior: bool = True, batch: int = 512
) -> np.ndarray:
    """Scores ``[n_users, N]`` of every item as each sequence's next one (full ranking, nothing excluded)."""
    was = model.training
    model.eval()
    items = model.item_vectors(use_ids)
    S = model.cfg.user.max_history
    out = []
    for i in range(0, len(seqs), batch):
        part = seqs[i : i + batch]
        hist = history_matrix(part, np.arange(len(part)), np.array([len(s) for s in part]), S)
        u, _ = model.user_vectors(torch.as_tensor(hist), use_ids)
        s = u @ items.t()
        if prior and model.cfg.popularity_prior:
            s = s + (model.pop_weight / model.loss.scale()) * model.prior()[None, :]
        out.append(s.numpy())
    model.train(was)
    return np.concatenate(out).astype(np.float64)


def train_textrec(
    seqs: list[np.ndarray],
    feats: np.ndarray,
    cfg: TextRecConfig,
    tc: TrainConfig,
    out_dir: str | Path,
    *,
    val_targets: np.ndarray | None = None,
    recent: int = 0,
    per_user: int = 0,
    resume: bool = False,
    report: dict[str, Any] | None = None,
    stop_after: int | None = None,
) -> TextItemRecModel:
    """Train a text-item recommender on ``seqs`` (item rows, oldest first) with the generic trainer.

    With ``val_targets`` and ``tc.early_stop_metric`` (``ndcg@10``), the returned model holds the weights of the
    epoch with the best validation figure; ``report`` (a dict) receives that epoch, the figure and the epochs run.
    ``stop_after`` N: stop after N epochs (``max_steps``), the learning-rate schedule still spanning ``tc.epochs``,
    so the run follows the same trajectory as the validated one that chose N.
    """
    from multimodal_rec.runtime import seed_everything
    from multimodal_rec.training.trainer import fit

    if cfg.negatives not in ("all", "batch"):
        raise UserError(f"textrec.negatives must be 'all' or 'batch', got {cfg.negatives!r}")
    if cfg.cold_prior not in ("median", "zero"):
        raise UserError(f"textrec.cold_prior must be 'median' or 'zero', got {cfg.cold_prior!r}")
    seed_everything(tc.seed)
    N = len(feats)
    counts = np.bincount(
        np.concatenate([np.asarray(s, np.int64) for s in seqs] or [np.zeros(0, np.int64)]), minlength=N
    )
    model = TextItemRecModel(cfg, feats, counts > 0, counts)
    task = NextItemTask(model, seqs, tc, val_targets, recent, per_user)
    if stop_after is not None:
        task.tc = tc = replace(tc, max_steps=stop_after * len(task.batches(0)))
    res = fit(task, tc, out_dir, device=torch.device("cpu"), resume=resume)
    best = Path(out_dir) / "best"
    meta = load_module(model, best, CONFIG_FILE) if res.best is not None else {}
    if report is not None:
        report.update(epochs_run=res.epochs, best_epoch=int(meta.get("epoch", res.epochs)))
        if res.best is not None:
            report["val_ndcg@10"] = float(res.best[VAL_METRIC])
    return model.eval()


def default_train_config(**overrides: Any) -> TrainConfig:
    """Training defaults for text items (small models, full softmax: a few epochs suffice)."""
    base = {"epochs": 10, "batch_size": 256, "lr": 2e-3, "warmup_steps": 50, "log_every": 50, "weight_decay": 0.01}
    return build_config(TrainConfig, {**base, **overrides}, "train")


def percentile_rank(ranks: np.ndarray, n_items: int) -> np.ndarray:
    """Rank as a fraction of the catalog (0 = top)."""
    return (ranks - 1) / max(1, n_items - 1)


__all__ = [
    "NextItemTask",
    "TextItemRecModel",
    "TextRecConfig",
    "default_train_config",
    "history_matrix",
    "percentile_rank",
    "save_textrec",
    "score_users",
    "text_features",
    "train_textrec",
]
