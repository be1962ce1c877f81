"""Evaluation by full ranking over the whole catalog (never sampled negatives), with baselines.

Text -> video: R@1/5/10 and median/mean rank of each held-out caption's own video. Semantic retrieval:
vocabulary and word-disjoint paraphrase queries, where every video whose color, shape and motion match the
query is relevant (P@5, R@5, NDCG@5, MRR). User -> video: leave-last-out Recall@K, NDCG@K, P@10, F1@10, MRR,
AUC and the beyond-accuracy figures (coverage, diversity in the bundle's embedding space, novelty) for the
user tower and for popularity, mean-of-history, random and the ID baselines. The metric definitions, the tie
rule (ties count against the target) and NaN handling are in :mod:`multimodal_rec.evaluation.metrics`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from multimodal_rec.data.tables import history_examples, item_counts, load_dataset, training_events
from multimodal_rec.evaluation.long_eval import evaluate_long, format_long, read_moments
from multimodal_rec.evaluation.metrics import leave_out_metrics, target_ranks
from multimodal_rec.evaluation.simple import (
    mean_history_scores,
    popularity_scores,
    random_scores,
    seen_mask,
    target_not_seen,
)
from multimodal_rec.evaluation.text_search import attribute_relevance, compare_modes, format_modes, semantic_metrics
from multimodal_rec.evaluation.trunk_ceiling import format_ceiling, trunk_ceiling
from multimodal_rec.serving.recommender import Recommender

LOG = logging.getLogger(__name__)
ATTRS = ("color", "shape", "motion")
__all__ = [
    "ablation",
    "evaluate",
    "format_report",
    "plot_user_recall",
    "semantic_retrieval",
    "text_to_video",
    "user_to_video",
]


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


def semantic_retrieval(
    rec: Recommender, queries: list[dict], rows: np.ndarray, k: int = 5, xb: np.ndarray | None = None
) -> dict[str, float]:
    """P@k, R@k, hit rate@k, NDCG@k and MRR where every video matching the query's color, shape and motion
    is relevant, ranked among catalog ``rows``; queries without a matching video are skipped. ``xb`` scores the
    videos with other vectors than ``rec.embeddings`` (the content-only / text-only ablation).

    On the held-out videos a query has two relevant videos, so R@5 is the share of them found and P@5 is at
    most 0.4; ``hit_rate@k`` divides by ``min(k, relevant)`` (kept for comparison with older reports).
    """
    relevant = attribute_relevance(rec.catalog.iloc[rows], queries)  # [nq, n]
    some = relevant.any(1)
    if not some.any():
        return {"queries": 0}
    xq = rec.encode_queries([q["query"] for q, ok in zip(queries, some, strict=True) if ok])
    xb = rec.embeddings if xb is None else xb
    return semantic_metrics(xq @ xb[rows].T, relevant[some], k)


def _user_sequences(rec: Recommender, ds: Any, users: list[str]) -> list[list[int]]:
    """Each user's training events (every event but the last) as catalog rows, oldest first."""
    ev = training_events(ds.interactions)
    by_user = {str(u): [rec.row_of[v] for v in g["video_id"] if v in rec.row_of] for u, g in ev.groupby("user_id")}
    return [by_user.get(u, []) for u in users]


def user_to_video(
    rec: Recommender, ds: Any, seeds: int = 1, id_baselines: bool = True
) -> tuple[list[dict[str, dict[str, float]]], int]:
    """Leave-last-out: each user's last event is the target, everything before it the history; one result per
    seed, and the number of users left out because their target was already among their earlier items.

    Every item the user saw before is excluded from the ranking, for every method alike; a user who saw the
    target before could never hit it, so is left out (rather than unmasking just the target, which would
    hand methods that score history items high a free hit). ``id_baselines`` adds BPR-MF, Mult-DAE and SASRec
    trained on the same events (ids only, no content). The bundle's own towers are scored once; what depends
    on the seed (baselines' training, random tie-breaks) per seed. Diversity uses the bundle's video
    embeddings for every method, novelty the training interaction counts.
    """
    max_hist = rec.model.cfg.user.max_history
    _train_ex, test_ex = history_examples(ds.interactions, max_hist, min_history=1, holdout_last=1)
    test_ex = [ex for ex in test_ex if ex.target in rec.row_of]
    if not test_ex:
        return [], 0
    n, N = len(test_ex), len(rec)
    targets = np.array([rec.row_of[ex.target] for ex in test_ex])
    seqs = _user_sequences(rec, ds, [ex.user_id for ex in test_ex])  # the history's items are among them
    pop = np.zeros(N)
    for vid, c in item_counts(ds.interactions).items():  # every event but each user's last
        if vid in rec.row_of:
            pop[rec.row_of[vid]] = c
    seen = seen_mask(seqs, N)
    keep = target_not_seen(seen, targets)
    if not keep.any():
        return [], n

    def metrics(scores: np.ndarray) -> dict[str, float]:
        return leave_out_metrics(scores[keep], targets[keep], seen[keep], rec.embeddings, pop)

    histories = [ex.history for ex in test_ex]
    flat = rec.encode_queries([t for h in histories for t in h])  # one pass over every history text
    ends = np.cumsum([len(h) for h in histories])
    hist_vectors = [flat[e - len(h) : e] for h, e in zip(histories, ends, strict=True)]
    mean_hist = mean_history_scores(hist_vectors, rec.embeddings)
    xb = np.asarray(rec.xb)  # the index's vectors, built whole
    fixed = {"user_tower": metrics(rec.user_queries(histories) @ xb.T)}
    if rec.prior_coef != 0.0:
        fixed["user_tower_content_only"] = metrics(rec.user_queries(histories, prior=False) @ xb.T)
    fixed["mean_history"] = metrics(mean_hist)
    runs = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        res = dict(fixed)
        res["popularity"] = metrics(popularity_scores(pop, n, rng))
        res["random"] = metrics(random_scores(n, N, rng))
        if id_baselines:
            from multimodal_rec.evaluation import baselines

            for name in ("bpr_mf", "mult_dae", "sasrec"):
                res[name] = metrics(getattr(baselines, name)(seqs, N, seed=seed))
        runs.append(res)
    return runs, int((~keep).sum())


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
    moments = read_moments(data_dir)
    if moments is not None:  # a long-video world: no users, no per-video attributes; moments instead
        out["long_videos"] = evaluate_long(rec, moments)
        out["user_to_video"] = {}
        return out
    if all(a in rec.catalog.columns for a in ATTRS):
        from multimodal_rec.data.synth import paraphrase_queries, vocab_queries

        rows = np.array([rec.row_of[v] for v in rec.video_ids if v in test_ids])
        everything = np.arange(len(rec))
        out["semantic_retrieval"] = {
            "vocabulary": semantic_retrieval(rec, vocab_queries(), rows),
            "paraphrase": semantic_retrieval(rec, paraphrase_queries(), rows),
            "vocabulary_whole_catalog": semantic_retrieval(rec, vocab_queries(), everything),
            "paraphrase_whole_catalog": semantic_retrieval(rec, paraphrase_queries(), everything),
        }
        out["ablation"] = ablation(rec, everything, vocab_queries(), paraphrase_queries())
        sets = {"vocabulary": vocab_queries(), "paraphrase": paraphrase_queries()}
        scopes = {"": rows, "_whole_catalog": everything}
        out["trunk_ceiling"] = trunk_ceiling(rec.model, rec.catalog, ds.captions, scopes, sets, vocab_queries())
    out["search_modes"] = compare_modes(rec)
    if rec.cfg is not None and rec.cfg.zero_shot:  # mmrec init: no user tower to evaluate yet
        out["user_to_video"] = {}
        return out
    runs, out["users_target_seen"] = user_to_video(rec, ds, seeds, id_baselines)
    if runs:
        out["seeds"] = seeds
        out["user_to_video"], out["user_to_video_std"] = _mean_std(runs)
    else:
        out["user_to_video"] = {}
    return out


def ablation(rec: Recommender, rows: np.ndarray, vocab: list[dict], para: list[dict]) -> dict[str, Any]:
    """Semantic retrieval over ``rows`` scored by the bundle's content vectors alone (``rec.content``) and by its
    text vectors alone (``rec.text``), next to the item vectors; ``{}`` when the bundle has neither."""
    parts = {"content_only": getattr(rec, "content", None), "text_only": getattr(rec, "text", None)}
    parts = {name: xb for name, xb in parts.items() if xb is not None}
    if not parts:
        return {}
    parts = {"item": rec.embeddings, **parts}
    queries = {"vocabulary": vocab, "paraphrase": para}
    out: dict[str, Any] = {}
    for name, xb in parts.items():
        out[name] = {q: semantic_retrieval(rec, qs, rows, xb=xb) for q, qs in queries.items()}
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


def _format_semantic(sem: dict[str, dict[str, float]]) -> list[str]:
    lines = [
        "semantic retrieval (relevant: every video whose color, shape and motion match the query), full ranking:",
        f"  {'queries':<44}{'relevant':>9}{'P@5':>8}{'R@5':>8}{'NDCG@5':>8}{'MRR':>8}",
    ]
    for name, r in sem.items():
        kind, _, scope = name.partition("_")
        where = "whole catalog" if scope else "held-out videos only"
        if r.get("queries", 0):
            label = f"{kind} ({r['queries']}), {where}"
            lines.append(
                f"  {label:<44}{r['relevant']:>9.1f}{r['p@5']:>8.3f}{r['r@5']:>8.3f}{r['ndcg@5']:>8.3f}{r['mrr']:>8.3f}"
            )
    return lines


def _format_ablation(abl: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    lines = [
        "ablation, semantic P@5 / NDCG@5 over the whole catalog by which vectors score the videos:",
        f"  {'vectors':<14}{'vocab P@5':>11}{'NDCG@5':>8}{'para P@5':>10}{'NDCG@5':>8}",
    ]
    for name, r in abl.items():
        v, p = r["vocabulary"], r["paraphrase"]
        if v.get("queries") and p.get("queries"):
            lines.append(f"  {name:<14}{v['p@5']:>11.3f}{v['ndcg@5']:>8.3f}{p['p@5']:>10.3f}{p['ndcg@5']:>8.3f}")
    return lines


def _format_users(res: dict[str, Any]) -> list[str]:
    uv, sd, seeds = res["user_to_video"], res.get("user_to_video_std") or {}, res.get("seeds", 1)
    users = int(next(iter(uv.values()))["users"])
    lines = [
        f"user->video, leave-last-out, {users} users, full ranking, seen items excluded"
        + (f", mean ± std over {seeds} seeds (baselines' training and ties):" if seeds > 1 else ":")
    ]
    if res.get("users_target_seen"):
        lines.append(
            f"  {res['users_target_seen']} users whose target was already in their history: left out "
            "(a seen item is never recommended)"
        )
    lines.append(
        f"  {'method':<24}{'Recall@10':>14}{'NDCG@10':>14}{'Recall@20':>10}{'NDCG@20':>10}{'P@10':>8}{'F1@10':>8}"
        f"{'MRR':>8}{'AUC':>8}"
    )

    def cell(m: str, k: str) -> str:
        s = sd.get(m, {}).get(k, 0.0)
        return f"{uv[m][k]:.3f}" + (f"±{s:.3f}" if seeds > 1 else "")

    for m, r in uv.items():
        lines.append(
            f"  {m:<24}{cell(m, 'recall@10'):>14}{cell(m, 'ndcg@10'):>14}{r['recall@20']:>10.3f}"
            f"{r['ndcg@20']:>10.3f}{r['precision@10']:>8.4f}{r['f1@10']:>8.4f}{r['mrr']:>8.3f}{r['auc']:>8.3f}"
        )
    lines.append("beyond accuracy of the same top-10 lists (diversity: 1 - cosine of the bundle's video embeddings):")
    lines.append(f"  {'method':<24}{'coverage@10':>14}{'diversity@10':>14}{'novelty@10':>14}")
    for m, r in uv.items():
        lines.append(f"  {m:<24}{r['coverage@10']:>14.3f}{r['diversity@10']:>14.3f}{r['novelty@10']:>14.2f}")
    return lines


def format_report(res: dict[str, Any]) -> str:
    """The evaluation as plain-text tables."""
    lines = [f"catalog: {res['videos']} videos ({res['held_out_videos']} held out from training)"]
    tv = res.get("text_to_video") or {}
    if tv:
        lines.append(
            f"text->video ({tv['queries']} held-out captions, full ranking): R@1 {tv['r@1']:.3f}  R@5 {tv['r@5']:.3f}"
            f"  R@10 {tv['r@10']:.3f}  median rank {tv['median_rank']:.0f}  mean rank {tv['mean_rank']:.1f}"
        )
    if res.get("semantic_retrieval"):
        lines += _format_semantic(res["semantic_retrieval"])
    if res.get("trunk_ceiling"):
        lines += format_ceiling(res["trunk_ceiling"], res.get("semantic_retrieval"))
    if res.get("ablation"):
        lines += _format_ablation(res["ablation"])
    if res.get("search_modes"):
        lines += format_modes(res["search_modes"])
    if res.get("long_videos"):
        lines += format_long(res["long_videos"])
    if res.get("user_to_video"):
        lines += _format_users(res)
    elif res.get("users_target_seen"):
        lines.append(f"user->video: every user's target was already in their history ({res['users_target_seen']})")
    return "\n".join(lines)
