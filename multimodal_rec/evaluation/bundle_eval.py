"""Evaluation by full ranking over the whole catalog (never sampled negatives), with baselines.

Text -> video: recall@1/5/10 and median/mean rank of each held-out caption's own video, and semantic
precision@5 for vocabulary and word-disjoint paraphrase queries. User -> video: leave-last-out Recall@K,
NDCG@K and MRR for the user tower and for popularity, mean-of-history and random baselines.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from multimodal_rec.data.tables import history_examples, item_counts, load_dataset, training_events
from multimodal_rec.evaluation.metrics import metrics_from_ranks, ranking_metrics, recall_curve, target_ranks
from multimodal_rec.serving.recommender import Recommender

LOG = logging.getLogger(__name__)
ATTRS = ("color", "shape", "motion")
__all__ = ["evaluate", "format_report", "plot_user_recall", "ranking_metrics", "semantic_precision", "target_ranks"]


def text_to_video(rec: Recommender, captions: list[tuple[str, str]]) -> dict[str, float]:
    """Each caption ranks the whole catalog; the caption's own video is the relevant one."""
    rows = [(rec.row_of[v], c) for v, c in captions if v in rec.row_of]
    if not rows:
        return {}
    xq = rec.encode_queries([c for _, c in rows])
    ranks = target_ranks(xq @ rec.embeddings.T, np.array([r for r, _ in rows]))
    return {
        "queries": len(rows),
        "r@1": float((ranks <= 1).mean()),
        "r@5": float((ranks <= 5).mean()),
        "r@10": float((ranks <= 10).mean()),
        "median_rank": float(np.median(ranks)),
        "mean_rank": float(ranks.mean()),
    }


def semantic_precision(rec: Recommender, queries: list[dict], rows: np.ndarray, k: int = 5) -> dict[str, float]:
    """Precision@k where a hit counts when color, shape and motion all match the query's.

    Ranked among catalog ``rows`` (the held-out videos); the denominator is ``min(k, #matching videos)``
    so a query with only two matching videos scores 1.0 when both come first.
    """
    cat = rec.catalog.iloc[rows]
    attrs = cat[list(ATTRS)].astype(str).to_numpy()
    xq = rec.encode_queries([q["query"] for q in queries])
    scores = xq @ rec.embeddings[rows].T  # [nq, n]
    precisions = []
    for q, s in zip(queries, scores, strict=True):
        match = (attrs == np.array([q[a] for a in ATTRS])).all(1)
        if not match.any():
            continue
        top = np.argsort(-s, kind="stable")[:k]
        precisions.append(match[top].sum() / min(k, match.sum()))
    return {"queries": len(precisions), f"p@{k}": float(np.mean(precisions)) if precisions else float("nan")}


def _user_sequences(rec: Recommender, ds: Any, users: list[str]) -> list[list[int]]:
    """Each user's training events (every event but the last) as catalog rows, oldest first."""
    ev = training_events(ds.interactions)
    by_user = {str(u): [rec.row_of[v] for v in g["video_id"] if v in rec.row_of] for u, g in ev.groupby("user_id")}
    return [by_user.get(u, []) for u in users]


def user_to_video(
    rec: Recommender, ds: Any, seeds: int = 1, id_baselines: bool = True
) -> list[dict[str, dict[str, float]]]:
    """Leave-last-out: each user's last event is the target, everything before it the history; one result per seed.

    Every item the user saw before is excluded from the ranking, for every method alike. ``id_baselines``
    adds BPR-MF, Mult-DAE and SASRec trained on the same events (ids only, no content). The bundle's own
    towers are scored once; what depends on the seed (baselines' training, random tie-breaks) per seed.
    """
    max_hist = rec.model.cfg.user.max_history
    _train_ex, test_ex = history_examples(ds.interactions, max_hist, min_history=1, holdout_last=1)
    test_ex = [ex for ex in test_ex if ex.target in rec.row_of]
    if not test_ex:
        return []
    N = len(rec)
    targets = np.array([rec.row_of[ex.target] for ex in test_ex])
    seqs = _user_sequences(rec, ds, [ex.user_id for ex in test_ex])
    pop = np.zeros(N)
    for vid, n in item_counts(ds.interactions).items():  # every event but each user's last
        if vid in rec.row_of:
            pop[rec.row_of[vid]] = n
    seen = np.zeros((len(test_ex), N), dtype=bool)
    for i, (ex, s) in enumerate(zip(test_ex, seqs, strict=True)):
        seen[i, s] = True
        seen[i, [rec.row_of[v] for v in ex.history_ids if v in rec.row_of]] = True

    def metrics(scores: np.ndarray) -> dict[str, float]:
        ranks = target_ranks(np.where(seen, -np.inf, scores.astype(np.float64)), targets)
        curve = {f"curve@{k}": v for k, v in recall_curve(ranks).items()}
        return {**metrics_from_ranks(ranks, N), **curve}

    histories = [ex.history for ex in test_ex]
    flat = rec.encode_queries([t for h in histories for t in h])  # one pass over every history text
    ends = np.cumsum([len(h) for h in histories])
    mean_hist = np.stack([flat[e - len(h) : e].mean(0) for h, e in zip(histories, ends, strict=True)])
    mean_hist /= np.linalg.norm(mean_hist, axis=1, keepdims=True).clip(1e-12)
    fixed = {"user_tower": metrics(rec.user_queries(histories) @ rec.xb.T)}
    if rec.prior_coef != 0.0:
        fixed["user_tower_content_only"] = metrics(rec.user_queries(histories, prior=False) @ rec.xb.T)
    fixed["mean_history"] = metrics(mean_hist @ rec.embeddings.T)
    runs = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        res = dict(fixed)
        res["popularity"] = metrics(np.tile(pop + 1e-6 * rng.random(N), (len(test_ex), 1)))
        res["random"] = metrics(rng.random((len(test_ex), N)))
        if id_baselines:
            from multimodal_rec.evaluation import baselines

            for name in ("bpr_mf", "mult_dae", "sasrec"):
                res[name] = metrics(getattr(baselines, name)(seqs, N, seed=seed))
        runs.append(res)
    return runs


def _mean_std(
    runs: list[dict[str, dict[str, float]]],
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Per method and metric: the mean and the standard deviation over seeds."""
    mean = {m: {k: float(np.mean([r[m][k] for r in runs])) for k in runs[0][m]} for m in runs[0]}
    std = {m: {k: float(np.std([r[m][k] for r in runs])) for k in runs[0][m]} for m in runs[0]}
    return mean, std


def evaluate(rec: Recommender, data_dir: str | Path, seeds: int = 1, id_baselines: bool = True) -> dict[str, Any]:
    """Every metric of the bundle ``rec`` on the data directory ``data_dir`` (held-out split + last events).

    ``seeds`` > 1 reruns what is random (baselines' training, tie-breaking) and reports the mean, with the
    standard deviation under ``user_to_video_std``; the bundle's own model is fixed, so its spread is 0.
    """
    model = rec.model
    cached = model.cache_text_features
    model.cache_text_features = True  # a batch job: each history text's trunk features are computed once
    try:
        return _evaluate(rec, data_dir, seeds, id_baselines)
    finally:
        model.cache_text_features = cached
        model.clear_text_cache()


def _evaluate(rec: Recommender, data_dir: str | Path, seeds: int, id_baselines: bool) -> dict[str, Any]:
    ds = load_dataset(data_dir)
    test_ids = set(ds.split_ids("test")) or set(ds.catalog["video_id"])
    caps = [(v, c) for v, c in zip(ds.captions["video_id"], ds.captions["caption"], strict=True) if v in test_ids]
    out: dict[str, Any] = {"videos": len(rec), "held_out_videos": len(test_ids & set(rec.row_of))}
    out["text_to_video"] = text_to_video(rec, caps)
    if all(a in rec.catalog.columns for a in ATTRS):
        from multimodal_rec.data.synth import paraphrase_queries, vocab_queries

        rows = np.array([rec.row_of[v] for v in rec.video_ids if v in test_ids])
        everything = np.arange(len(rec))
        out["semantic_p@5"] = {
            "vocabulary": semantic_precision(rec, vocab_queries(), rows),
            "paraphrase": semantic_precision(rec, paraphrase_queries(), rows),
            "vocabulary_whole_catalog": semantic_precision(rec, vocab_queries(), everything),
            "paraphrase_whole_catalog": semantic_precision(rec, paraphrase_queries(), everything),
        }
    runs = user_to_video(rec, ds, seeds, id_baselines)
    if runs:
        out["seeds"] = seeds
        out["user_to_video"], out["user_to_video_std"] = _mean_std(runs)
    else:
        out["user_to_video"] = {}
    return out


def plot_user_recall(res: dict[str, Any], path: str | Path) -> bool:
    """Recall@K curves of the user->video methods as a PNG; False when there is nothing to plot."""
    from multimodal_rec.evaluation.ml100k.run import plot_recall_curves

    uv = res.get("user_to_video") or {}
    if not uv:
        return False
    curves = {m: {k.split("@")[1]: v for k, v in r.items() if k.startswith("curve@")} for m, r in uv.items()}
    plot_recall_curves(curves, Path(path), "user->video, leave-last-out")
    return True


def format_report(res: dict[str, Any]) -> str:
    """The evaluation as a plain-text table."""
    lines = [f"catalog: {res['videos']} videos ({res['held_out_videos']} held out from training)"]
    tv = res.get("text_to_video") or {}
    if tv:
        lines.append(
            f"text->video ({tv['queries']} held-out captions, full ranking): R@1 {tv['r@1']:.3f}  R@5 {tv['r@5']:.3f}"
            f"  R@10 {tv['r@10']:.3f}  median rank {tv['median_rank']:.0f}  mean rank {tv['mean_rank']:.1f}"
        )
    for name, sp in (res.get("semantic_p@5") or {}).items():
        kind, _, scope = name.partition("_")
        where = "whole catalog, training videos included" if scope else "held-out videos only"
        lines.append(f"semantic precision@5, {kind} queries ({sp['queries']}, {where}): {sp['p@5']:.3f}")
    uv = res.get("user_to_video") or {}
    if uv:
        users = int(next(iter(uv.values()))["users"])
        sd = res.get("user_to_video_std") or {}
        seeds = res.get("seeds", 1)
        lines.append(
            f"user->video, leave-last-out, {users} users, full ranking, seen items excluded"
            + (f", mean ± std over {seeds} seeds (baselines' training and ties):" if seeds > 1 else ":")
        )
        lines.append(f"  {'method':<24}{'Recall@10':>14}{'NDCG@10':>14}{'Recall@20':>10}{'NDCG@20':>10}{'MRR':>8}")

        def cell(m: str, k: str) -> str:
            s = sd.get(m, {}).get(k, 0.0)
            return f"{uv[m][k]:.3f}" + (f"±{s:.3f}" if seeds > 1 else "")

        for m, r in uv.items():
            lines.append(
                f"  {m:<24}{cell(m, 'recall@10'):>14}{cell(m, 'ndcg@10'):>14}{r['recall@20']:>10.3f}"
                f"{r['ndcg@20']:>10.3f}{r['mrr']:>8.3f}"
            )
    return "\n".join(lines)
