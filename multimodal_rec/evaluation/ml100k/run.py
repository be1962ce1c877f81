"""``mmrec eval --dataset ml-100k``: our user tower against the field's baselines on MovieLens-100k.

Items are text (title + year + genres) encoded by the text tower, since there is no video. Every method ranks
the whole catalog (full ranking, never sampled negatives) with the user's earlier items excluded, for every
method alike; a user whose target is among those earlier items (never in ml-100k, whose user-movie pairs are
unique) would be left out and counted. Metrics: :mod:`multimodal_rec.evaluation.metrics`. Splits: ``loo``
(leave-last-out: each user's last event is the target) or ``time`` (a global time cut at the 90th percentile
of timestamps: each user's first event after it is the target, only events before it train). Events sharing
a timestamp are ordered at random per seed (76% of ml-100k's events share one with another event of the same
user; ordering them by id would bias targets toward rare films).

Methods: ``user_tower`` (text + learned ID embedding for items seen in training, the hybrid),
``user_tower_text_only``, ``user_tower_no_attention`` (last hidden state), ``popularity``, ``mean_history``
(mean of the history items' MiniLM embeddings), ``random``, ``bpr_mf``, ``mult_dae``, ``sasrec``, and
``user_tower_unseen_items``: 10% of the movies are held out of training entirely and the hybrid tower is scored
on the users whose target is one of them (``popularity_unseen_items`` and ``mean_history_unseen_items`` beside
it). Trainings of one seed and method run as separate jobs in a process pool (one torch thread each).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from multimodal_rec.errors import UserError
from multimodal_rec.evaluation.metrics import CURVE_KS, leave_out_metrics
from multimodal_rec.evaluation.ml100k.methods import (
    ID_BASELINES,
    TUNED_FILE,
    chosen_epochs,
    fit_and_score,
    load_tuned,
    merge,
    method_params,
    trainings_pool,
)
from multimodal_rec.evaluation.simple import (
    mean_history_scores,
    popularity_scores,
    random_scores,
    seen_mask,
    target_not_seen,
)
from multimodal_rec.progress import ProgressFn, no_progress

LOG = logging.getLogger(__name__)
TRAINED = ("user_tower", "user_tower_text_only", "user_tower_no_attention", "user_tower_unseen_items")
CHEAP = ("popularity", "mean_history", "random")
ALL_METHODS = TRAINED + ID_BASELINES + CHEAP
DEFAULT_METHODS = (  # user_tower_text_only and user_tower_no_attention are ablations: --methods adds them
    "user_tower",
    "popularity",
    "mean_history",
    "random",
    "bpr_mf",
    "mult_dae",
    "sasrec",
    "user_tower_unseen_items",
)
UNSEEN_FRACTION = 0.1


@dataclass
class Split:
    seqs: list[np.ndarray]  # per user: training item rows, oldest first
    users: np.ndarray  # users that have a target
    targets: np.ndarray  # their target item rows


def user_sequences(inter: Any, items: Any, seed: int) -> list[np.ndarray]:
    """Each user's item rows in time order, same-timestamp events shuffled with ``seed``."""
    row = {v: i for i, v in enumerate(items["video_id"])}
    key = np.random.default_rng(seed).random(len(inter))
    inter = inter.assign(_k=key).sort_values(["user_id", "timestamp", "_k"], kind="stable")
    rows = inter["video_id"].map(row).to_numpy()
    return [rows[idx] for idx in inter.groupby("user_id", sort=True).indices.values()]


def make_split(inter: Any, items: Any, seed: int, split: str = "loo") -> Split:
    """Training sequences and targets for the leave-last-out (``loo``) or global-time (``time``) split."""
    if split == "loo":
        full = user_sequences(inter, items, seed)
        ok = np.array([u for u, s in enumerate(full) if len(s) >= 2])
        return Split([s[:-1] for s in full], ok, np.array([full[u][-1] for u in ok]))
    if split != "time":
        raise UserError(f"unknown split {split!r} (choose loo or time)")
    cut = np.quantile(inter["timestamp"].to_numpy(), 0.9)
    before = inter[inter["timestamp"] < cut]
    after = inter[inter["timestamp"] >= cut]
    users = sorted(inter["user_id"].unique(), key=lambda u: int(u) if str(u).isdigit() else u)
    row = {v: i for i, v in enumerate(items["video_id"])}
    seq_of = dict(zip(sorted(before["user_id"].unique()), user_sequences(before, items, seed), strict=True))
    seqs = [seq_of.get(u, np.zeros(0, np.int64)) for u in users]
    first = after.sort_values(["timestamp"], kind="stable").groupby("user_id")["video_id"].first()
    pos = {u: i for i, u in enumerate(users)}
    ok = [(pos[u], row[v]) for u, v in first.items() if len(seqs[pos[u]]) >= 1]
    return Split(seqs, np.array([u for u, _ in ok]), np.array([t for _, t in ok]))


@dataclass
class LeaveOut:
    """The one seen-masked ranking of a split, shared by every method: which users count, what each saw.

    ``seen[i]`` masks user ``users[i]``'s training items; a user whose target is among them can never hit it
    and is left out (``keep``). Novelty uses the split's training counts, diversity the movies' text features.
    """

    sp: Split
    seen: np.ndarray  # [len(sp.users), n_items] bool
    keep: np.ndarray  # [len(sp.users)] bool: the target is not among the user's training items
    counts: np.ndarray  # [n_items] training interactions per movie
    vectors: np.ndarray  # [n_items, D] unit-norm text features

    @classmethod
    def of(cls, sp: Split, vectors: np.ndarray) -> LeaveOut:
        seen = seen_mask([sp.seqs[u] for u in sp.users], len(vectors))
        counts = np.bincount(np.concatenate(sp.seqs), minlength=len(vectors)).astype(np.float64)
        return cls(sp, seen, target_not_seen(seen, sp.targets), counts, vectors)

    def metrics(self, scores: np.ndarray, sel: np.ndarray | None = None) -> dict[str, float]:
        """Every metric of ``scores`` (rows: ``sp.users``, or ``sp.users[sel]`` for a bool ``sel``)."""
        idx = np.arange(len(self.keep)) if sel is None else np.flatnonzero(sel)
        ok = self.keep[idx]
        rows = idx[ok]
        return leave_out_metrics(scores[ok], self.sp.targets[rows], self.seen[rows], self.vectors, self.counts)


def evaluate_ml100k(
    seeds: int = 3,
    methods: Sequence[str] = DEFAULT_METHODS,
    split: str = "loo",
    jobs: int = 0,
    config: dict[str, Any] | None = None,
    out_dir: str | Path | None = None,
    progress: ProgressFn = no_progress,
    tuned: str | Path | None = None,
) -> dict[str, Any]:
    """Train and score every method on ml-100k for ``seeds`` seeds; mean and std of each metric.

    Each trained method reads its settings and epoch count from ``tuned`` (a file ``--tune`` wrote; default: the
    committed ``tuned.json``), trains on the whole training history for that many epochs and is scored once on the
    test targets (:mod:`multimodal_rec.evaluation.ml100k.protocol`); a settings file without epoch counts makes
    each training stop early on the validation split instead. ``config`` overrides the towers' settings:
    ``{"model": {...TextRecConfig}, "train": {...TrainConfig}, "recent": N}``. With ``out_dir``,
    ``results.json`` and ``recall_at_k.png`` are written there.
    """
    from multimodal_rec.evaluation.ml100k.movielens import load_ml100k
    from multimodal_rec.evaluation.ml100k.textrec import text_features, textrec_config

    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise UserError(f"unknown method {unknown[0]!r} (choose from {', '.join(ALL_METHODS)})")
    if seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}")
    doc = load_tuned(tuned)
    trained = [m for m in methods if m in TRAINED or m in ID_BASELINES]
    params = {m: merge(method_params(doc, m), (config or {}) if m in TRAINED else {}) for m in trained}
    tower = params.get("user_tower") or merge(method_params(doc, "user_tower"), config or {})
    max_history = textrec_config(tower.get("model")).user.max_history
    t0 = time.perf_counter()
    items, inter = load_ml100k()
    n_items = len(items)
    LOG.info("ml-100k: text features of %d movies (MiniLM, once)", n_items)
    feats = text_features(list(items["text"]))
    work = [(m, s) for s in range(seeds) for m in trained]
    jobs = jobs or max(1, min(len(work), os.cpu_count() or 1))
    splits = {s: make_split(inter, items, s, split) for s in range(seeds)}
    unseen = {
        s: np.sort(np.random.default_rng(1000 + s).permutation(n_items)[: round(UNSEEN_FRACTION * n_items)])
        for s in range(seeds)
    }
    x = feats / np.linalg.norm(feats, axis=1, keepdims=True).clip(1e-12)
    evals = {s: LeaveOut.of(splits[s], x) for s in range(seeds)}
    runs: dict[str, list[dict[str, float]]] = {}
    reports: dict[str, list[dict[str, Any]]] = {}
    LOG.info("ml-100k: %d trainings (%d seeds) in %d processes", len(work), seeds, jobs)
    bar = progress(total=len(work), desc="ml-100k trainings", unit="run")
    with trainings_pool(jobs) as pool:
        futures = {
            (m, s): pool.submit(
                fit_and_score,
                m,
                s,
                _training_seqs(m, splits[s], unseen[s], n_items),
                feats,
                params[m],
                splits[s].seqs,
                chosen_epochs(doc, m),
            )
            for m, s in work
        }
        for s in range(seeds):  # the cheap methods, while the pool trains
            _cheap_methods(evals[s], x, unseen[s], max_history, methods, np.random.default_rng(s), runs)
        for (m, s), fut in futures.items():
            sp = splits[s]
            scores, report = fut.result()
            scores = scores[sp.users]  # every user was scored; the metrics are over the users with a test target
            sel = np.isin(sp.targets, unseen[s]) if m == "user_tower_unseen_items" else None
            runs.setdefault(m, []).append(evals[s].metrics(scores if sel is None else scores[sel], sel))
            reports.setdefault(m, []).append(report)
            bar.update(1)
    bar.close()
    order = [m for m in ALL_METHODS if m in runs] + [m for m in runs if m not in ALL_METHODS]  # *_unseen_items last
    res = {
        "dataset": "ml-100k",
        "split": split,
        "seeds": seeds,
        "users": int(evals[0].keep.sum()),
        "users_target_seen": int((~evals[0].keep).sum()),
        "items": n_items,
        "unseen_items": len(unseen[0]),
        "seconds": round(time.perf_counter() - t0, 1),
        "tuned": str(tuned) if tuned is not None else f"(committed) {TUNED_FILE}",
        "settings": {m: {"params": params[m], **_training_summary(reports[m])} for m in trained},
        "results": {m: _aggregate(runs[m]) for m in order},
        "recall_curve": {m: _curve(runs[m]) for m in order},
    }
    if out_dir is not None:
        write_outputs(res, Path(out_dir))
    return res


def _training_seqs(method: str, sp: Split, unseen: np.ndarray, n_items: int) -> list[np.ndarray]:
    """What ``method`` trains on: the training histories, less the held-out movies for ``user_tower_unseen_items``
    (they vanish from training: no ID, no target, no history; scoring reads them by their text alone)."""
    if method != "user_tower_unseen_items":
        return sp.seqs
    held = np.zeros(n_items, dtype=bool)
    held[unseen] = True
    return [s[~held[s]] for s in sp.seqs]


def _training_summary(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method over seeds: the early-stopping epochs, validation NDCG@10 and seconds of each training."""
    return {k: [r.get(k) for r in reports] for k in ("best_epoch", "epochs_run", "val_ndcg@10", "seconds")}


def _cheap_methods(
    ev: LeaveOut,
    x: np.ndarray,
    unseen: np.ndarray,
    max_history: int,
    methods: Sequence[str],
    rng: np.random.Generator,
    runs: dict[str, list[dict[str, float]]],
) -> None:
    """Popularity, mean of history and random on one split (and on the unseen-items users), into ``runs``.

    All three are scored whatever ``methods`` asks, so the seed's random stream is the same in every run.
    """
    sp, n_items = ev.sp, len(x)
    cheap = {
        "popularity": popularity_scores(ev.counts, len(sp.users), rng),
        "mean_history": mean_history_scores([x[sp.seqs[u][-max_history:]] for u in sp.users], x),
        "random": random_scores(len(sp.users), n_items, rng),
    }
    for m, scores in cheap.items():
        if m in methods:
            runs.setdefault(m, []).append(ev.metrics(scores))
    if "user_tower_unseen_items" in methods:  # the same baselines when those movies have no history
        sel = np.isin(sp.targets, unseen)
        held = np.isin(np.arange(n_items), unseen)
        cold = np.bincount(np.concatenate([q[~held[q]] for q in sp.seqs]), minlength=n_items).astype(np.float64)
        cold_scores = {
            "popularity": popularity_scores(cold, int(sel.sum()), rng),
            "mean_history": cheap["mean_history"][sel],
        }
        for m, sc in cold_scores.items():
            runs.setdefault(f"{m}_unseen_items", []).append(ev.metrics(sc, sel))


def _curve(runs: list[dict[str, float]]) -> dict[str, float]:
    """Recall@K against K, mean over seeds (keys: the Ks as strings)."""
    return {str(k): float(np.mean([r[f"curve@{k}"] for r in runs])) for k in CURVE_KS}


def _aggregate(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and std over seeds of each metric (the Recall@K curve points aside: they go to ``recall_curve``)."""
    keys = [k for k in runs[0] if not k.startswith("curve@")]
    return {k: {"mean": float(np.mean([r[k] for r in runs])), "std": float(np.std([r[k] for r in runs]))} for k in keys}


def write_outputs(res: dict[str, Any], out: Path) -> None:
    """``results.json`` and ``recall_at_k.png`` (Recall@K curves, mean over seeds), each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(res, indent=2))
    tmp.replace(out / "results.json")
    plot_recall_curves(res["recall_curve"], out / "recall_at_k.png", f"{res['dataset']} ({res['split']} split)")


def plot_recall_curves(curves: dict[str, dict[str, float]], path: Path, title: str) -> None:
    """One line per method: Recall@K against K (log x axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m, c in curves.items():
        ks = [int(k) for k in c]
        ax.plot(ks, list(c.values()), marker=".", label=m, linestyle="--" if "unseen" in m else "-")
    ax.set_xscale("log")
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K")
    ax.set_title(f"Recall@K, full ranking — {title}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)


def format_ml100k(res: dict[str, Any]) -> str:
    """The results as two terminal tables, accuracy then the rest: mean ± std over seeds."""
    lines = [
        f"ml-100k, {res['split']} split, {res['users']} users, {res['items']} movies, full ranking, seen items "
        f"excluded, {res['seeds']} seed(s), {res['seconds']:.0f} s",
    ]
    if res.get("users_target_seen"):
        lines.append(f"{res['users_target_seen']} users whose target was already in their history: left out")
    lines.append(
        f"{'method':<28}{'NDCG@10':>16}{'Recall@10':>16}{'Recall@50':>16}{'MRR':>16}{'median rank':>14}{'users':>7}"
    )

    def ms(r: dict[str, float], digits: int = 4) -> str:
        return f"{r['mean']:.{digits}f}±{r['std']:.{digits}f}"

    for m, r in res["results"].items():
        lines.append(
            f"{m:<28}{ms(r['ndcg@10']):>16}{ms(r['recall@10']):>16}{ms(r['recall@50']):>16}{ms(r['mrr']):>16}"
            f"{r['median_rank']['mean']:>14.0f}{r['users']['mean']:>7.0f}"
        )
    lines.append("the same rankings: P@10, F1@10, AUC; beyond accuracy (diversity: 1 - cosine of the text features)")
    lines.append(
        f"{'method':<28}{'P@10':>15}{'F1@10':>15}{'AUC':>15}{'coverage@10':>15}{'diversity@10':>15}{'novelty@10':>15}"
    )
    for m, r in res["results"].items():
        lines.append(
            f"{m:<28}{ms(r['precision@10'], 4):>15}{ms(r['f1@10'], 4):>15}{ms(r['auc'], 3):>15}"
            f"{ms(r['coverage@10'], 3):>15}{ms(r['diversity@10'], 3):>15}{ms(r['novelty@10'], 2):>15}"
        )
    lines.append(f"unseen items: {res['unseen_items']} movies ({UNSEEN_FRACTION:.0%}) held out of training entirely")
    return "\n".join(lines)
