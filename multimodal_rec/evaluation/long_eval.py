"""Evaluation on long videos (a data directory with ``moments.csv``, from ``mmrec synth --long``).

Each vocabulary or paraphrase query describes one colour/shape/motion; a video is *relevant* when one of its parts
shows it. Over the whole catalog, ``rec.search(query, k=5, mode="vector")``:

- video-level ``P@5 = relevant videos among the 5 hits / 5`` (as the short world's P@5);
- moment ``R@1, IoU >= m``: the share of queries whose top-1 hit is a relevant video *and* whose moment overlaps
  the true span of the matching part with temporal IoU >= m (m = 0.3, 0.5, 0.7); ``mean IoU`` the mean of that
  IoU (0 when the top hit is not relevant or has no moment). This is the corpus-level definition: finding the
  wrong video counts as a miss;
- localisation given the video: the same IoU figures over every relevant video among the 5 hits (how well the
  moment is placed once the video is right).

``temporal_iou`` and the metric functions are pure (spans are ``(start_s, end_s)`` pairs).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multimodal_rec.evaluation.metrics import precision_at_k

LOG = logging.getLogger(__name__)
THRESHOLDS = (0.3, 0.5, 0.7)
ATTRS = ("color", "shape", "motion")
Span = tuple[float, float]


def temporal_iou(a: Span, b: Span) -> float:
    """Intersection over union of two time spans; 0 when they do not overlap (or both are empty)."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0


def best_iou(moment: Span | None, truth: Sequence[Span]) -> float:
    """The best IoU of ``moment`` with any true span (a video may show a combination more than once); 0 if none."""
    if moment is None or not truth:
        return 0.0
    return max(temporal_iou(moment, t) for t in truth)


def moment_recall(
    ious: Iterable[float], thresholds: Sequence[float] = THRESHOLDS, prefix: str = "r@1_"
) -> dict[str, float]:
    """``<prefix>iou>=m``: share of IoUs >= m for each threshold, and ``mean_iou``; empty input: ``{}``."""
    x = np.asarray(list(ious), dtype=np.float64)
    if not len(x):
        return {}
    return {f"{prefix}iou>={m}": float((x >= m - 1e-9).mean()) for m in thresholds} | {"mean_iou": float(x.mean())}


def relevant_spans(moments: pd.DataFrame, query: Mapping[str, str]) -> dict[str, list[Span]]:
    """Video id -> the spans of its parts that show the query's colour, shape and motion."""
    m = moments
    hit = (m["color"] == query["color"]) & (m["shape"] == query["shape"]) & (m["motion"] == query["motion"])
    out: dict[str, list[Span]] = {}
    for vid, s, e in zip(m["video_id"][hit], m["start_s"][hit], m["end_s"][hit], strict=True):
        out.setdefault(str(vid), []).append((float(s), float(e)))
    return out


def hit_span(hit: Any) -> Span | None:
    """A hit's moment as a span (None when it carries none)."""
    moment = getattr(hit, "moment", None)
    return None if not moment else (float(moment["start_s"]), float(moment["end_s"]))


def score_query(hits: Sequence[Any], truth: Mapping[str, Sequence[Span]], k: int) -> dict[str, Any]:
    """One query's figures: ``p`` (P@k), ``top_iou`` (top-1 hit's IoU, 0 when it is not relevant), and
    ``found_ious`` (the IoU of every relevant hit among the k)."""
    ranked = [h.video_id for h in hits]
    top = hits[0] if hits else None
    top_iou = best_iou(hit_span(top), truth.get(top.video_id, ())) if top is not None else 0.0
    found = [best_iou(hit_span(h), truth[h.video_id]) for h in hits[:k] if h.video_id in truth]
    return {"p": precision_at_k(ranked, truth, k), "top_iou": top_iou, "found_ious": found}


def long_retrieval(
    rec: Any, moments: pd.DataFrame, queries: list[dict], k: int = 5, mode: str | None = "vector"
) -> dict[str, Any]:
    """P@k and moment figures of ``queries`` over the whole served catalog (queries with no relevant video are
    skipped); ``chance_p@k`` is what a random ranking would score."""
    served = moments[moments["video_id"].astype(str).isin(set(rec.row_of))]
    truths = [relevant_spans(served, q) for q in queries]
    keep = [i for i, t in enumerate(truths) if t]
    if not keep:
        return {"queries": 0}
    hits = rec.search_batch([queries[i]["query"] for i in keep], k=k, mode=mode)
    per = [score_query(h, truths[i], k) for h, i in zip(hits, keep, strict=True)]
    n_rel = np.array([len(truths[i]) for i in keep], dtype=np.float64)
    out: dict[str, Any] = {
        "queries": len(keep),
        "relevant": float(n_rel.mean()),
        f"p@{k}": float(np.mean([p["p"] for p in per])),
        f"chance_p@{k}": float(np.mean(n_rel / max(len(rec), 1))),
    }
    out |= moment_recall(p["top_iou"] for p in per)
    found = [x for p in per for x in p["found_ious"]]
    out["given_video"] = {"pairs": len(found)} | moment_recall(found, prefix="")
    return out


def read_moments(data_dir: str | Path) -> pd.DataFrame | None:
    """``moments.csv`` of a data directory (None when there is none: a short-clip world)."""
    path = Path(data_dir) / "moments.csv"
    if not path.is_file():
        return None
    return pd.read_csv(path, dtype={"video_id": str, "color": str, "shape": str, "motion": str})


def evaluate_long(rec: Any, moments: pd.DataFrame, k: int = 5) -> dict[str, Any]:
    """Vocabulary and paraphrase queries on a long-video catalog (vector mode)."""
    from multimodal_rec.data.synth import paraphrase_queries, vocab_queries

    return {
        "parts": len(moments),
        "vocabulary": long_retrieval(rec, moments, vocab_queries(), k),
        "paraphrase": long_retrieval(rec, moments, paraphrase_queries(), k),
    }


def format_long(res: Mapping[str, Any]) -> list[str]:
    """The long-video tables as text lines."""
    lines = [
        f"long videos ({res['parts']} parts; relevant: a video with a part matching the query), vector search, "
        "whole catalog; moment = the top hit's moment against the matching part's span:",
        f"  {'queries':<18}{'relevant':>9}{'P@5':>8}{'chance':>8}{'R@1 IoU.3':>11}{'IoU.5':>8}{'IoU.7':>8}"
        f"{'mean IoU':>10}   {'given the video: IoU.5':>22}{'mean IoU':>10}",
    ]
    for kind in ("vocabulary", "paraphrase"):
        r = res.get(kind) or {}
        if not r.get("queries"):
            continue
        g, label = r["given_video"], f"{kind} ({r['queries']})"
        lines.append(
            f"  {label:<18}{r['relevant']:>9.1f}{r['p@5']:>8.3f}{r['chance_p@5']:>8.3f}"
            f"{r['r@1_iou>=0.3']:>11.3f}{r['r@1_iou>=0.5']:>8.3f}{r['r@1_iou>=0.7']:>8.3f}{r['mean_iou']:>10.3f}   "
            f"{g.get('iou>=0.5', float('nan')):>22.3f}{g.get('mean_iou', float('nan')):>10.3f}"
        )
    return lines
