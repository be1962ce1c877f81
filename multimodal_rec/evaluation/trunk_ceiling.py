"""The trunk ceiling: the synthetic world's semantic queries answered by the bundle's text trunk alone, no training.

How much of a paraphrase gap is the text model's own ignorance and how much is ours? Both figures below read only the
trunk's sentence space (its pooled features as the text tower computes them, mean-pooled for MiniLM, L2-normalised)
and take the video side as perfect, so they bound what the text side can reach without the trained head:

- **nearest phrase**: the queries are compared with the vocabulary phrases (``data.synth.vocab_queries``: one
  caption-vocabulary phrase per colour x shape x motion, "a red circle moving left"); a video scores the cosine between
  the query and its own combination's phrase. The videos of the nearest phrase come first, then those of the second,
  and so on; a phrase's videos tie, and ties are broken against the relevant videos (the pessimistic rule of
  :mod:`~multimodal_rec.evaluation.metrics`; over the whole catalog a phrase's videos are all relevant or all not, so
  the tie rule cannot change P@5 there). Vocabulary queries are the phrases themselves, so they score 1.0 by
  construction; the paraphrase figure is the one that matters.
- **max caption**: a video scores the highest cosine between the query and any of its captions (``captions.csv``:
  every video's, held-out ones included, as a perfect description of the clip); ties against the relevant videos.

The trunk is the bundle's own (``model.text``), so a bundle built on another text model gets that model's ceiling.
With a frozen trunk (the default) it is the pretrained model untouched; a fine-tuned trunk is reported as such.
Relevance and the metric definitions are those of the semantic retrieval table (``bundle_eval.semantic_retrieval``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from multimodal_rec.evaluation.text_search import ATTRS, attribute_relevance, semantic_metrics

LOG = logging.getLogger(__name__)
METHODS = ("nearest_phrase", "max_caption")
Features = Callable[[Sequence[str]], np.ndarray]  # texts -> unit-norm trunk features [n, H]


def trunk_features(model: Any) -> Features:
    """The model's text-trunk features of texts, L2-normalised (``[n, H]`` float32; no gradient, no projection); each
    distinct text runs through the trunk once."""

    def features(texts: Sequence[str]) -> np.ndarray:
        distinct, at = np.unique(np.asarray(list(texts), dtype=object).astype(str), return_inverse=True)
        with torch.inference_mode():
            x = model.text_features(distinct.tolist()).float().cpu().numpy()
        return (x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12))[at]

    return features


def phrase_of_videos(phrases: list[dict], catalog: pd.DataFrame) -> np.ndarray:
    """``[N]``: the index of each video's combination among ``phrases`` (-1: none)."""
    index = {tuple(p[a] for a in ATTRS): i for i, p in enumerate(phrases)}
    return np.array([index.get(tuple(v), -1) for v in catalog[list(ATTRS)].astype(str).to_numpy()], dtype=np.int64)


def nearest_phrase_scores(xq: np.ndarray, xp: np.ndarray, of_video: np.ndarray) -> np.ndarray:
    """``[nq, N]``: the cosine between each query ``xq [nq, H]`` and the phrase ``xp [P, H]`` of each video's
    combination (``of_video [N]``; ``-inf`` for a video whose combination has no phrase)."""
    scores = (xq @ xp.T)[:, np.maximum(of_video, 0)]  # [nq, N]
    scores[:, of_video < 0] = -np.inf
    return scores


def captions_by_row(captions: pd.DataFrame, row_of: Mapping[str, int]) -> tuple[list[str], np.ndarray]:
    """The captions of the catalog's videos sorted by catalog row, and that row of each."""
    caps = captions[captions["video_id"].astype(str).isin(row_of)]
    rows = caps["video_id"].astype(str).map(row_of).to_numpy(dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    return caps["caption"].astype(str).to_numpy()[order].tolist(), rows[order]


def max_caption_scores(xq: np.ndarray, xc: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """``[nq, n]``: each video's best cosine between the query and its captions (``xc [nc, H]``, sorted by their
    catalog ``rows [nc]``); ``-inf`` for a video without a caption."""
    scores = np.full((len(xq), n), -np.inf, dtype=np.float32)
    if len(rows):
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])  # first caption of each video
        scores[:, rows[starts]] = np.maximum.reduceat(xq @ xc.T, starts, axis=1)
    return scores


def trunk_ceiling(
    model: Any,
    catalog: pd.DataFrame,
    captions: pd.DataFrame,
    scopes: Mapping[str, np.ndarray],
    queries: Mapping[str, list[dict]],
    phrases: list[dict],
    k: int = 5,
) -> dict[str, Any]:
    """Semantic P@k, R@k, NDCG@k and MRR of both trunk-only methods for each query set and each scope of catalog
    rows: keys ``f"{query set}{suffix}"`` as ``semantic_retrieval``'s (``scopes``: suffix -> rows, e.g. ``{"": held
    out, "_whole_catalog": every row}``). ``catalog`` rows are the bundle's, ``captions`` has video_id, caption."""
    features = trunk_features(model)
    row_of = {v: i for i, v in enumerate(catalog["video_id"].astype(str))}
    texts, cap_rows = captions_by_row(captions, row_of)
    xp, xc = features([p["query"] for p in phrases]), features(texts)  # [P, H], [nc, H]: once for every query set
    of_video = phrase_of_videos(phrases, catalog)
    out: dict[str, Any] = {"trunk": "frozen" if getattr(model.text, "trunk_frozen", True) else "fine-tuned"}
    out |= {"phrases": len(phrases), "captions": len(texts)}
    for name, qs in queries.items():
        xq = features([q["query"] for q in qs])  # [nq, H]
        relevant = attribute_relevance(catalog, qs)  # [nq, N]
        scores = {
            "nearest_phrase": nearest_phrase_scores(xq, xp, of_video),
            "max_caption": max_caption_scores(xq, xc, cap_rows, len(catalog)),
        }
        for method, s in scores.items():
            for suffix, rows in scopes.items():
                rows = np.asarray(rows, dtype=np.int64)
                rel = relevant[:, rows]
                some = rel.any(1)
                res = semantic_metrics(s[some][:, rows], rel[some], k) if some.any() else {"queries": 0}
                out.setdefault(method, {})[f"{name}{suffix}"] = res
    return out


def format_ceiling(ceiling: dict[str, Any], system: Mapping[str, Mapping[str, float]] | None = None) -> list[str]:
    """The ceiling beside the system's own figures (``semantic_retrieval``'s dict) as text lines."""
    lines = [
        f"trunk ceiling: the text trunk alone ({ceiling['trunk']}, no training), videos taken as perfectly described; "
        "P@5 over the whole catalog, R@5 over held-out videos:",
        f"  {'method':<28}{'vocab P@5':>10}{'para P@5':>10}{'vocab R@5':>11}{'para R@5':>10}",
    ]
    rows = {"system (vector search)": system or {}} | {
        f"{m.replace('_', ' ')} (trunk)": ceiling.get(m, {}) for m in METHODS
    }
    for label, r in rows.items():
        cells = [
            r.get(key, {}).get(metric, float("nan"))
            for key, metric in (
                ("vocabulary_whole_catalog", "p@5"),
                ("paraphrase_whole_catalog", "p@5"),
                ("vocabulary", "r@5"),
                ("paraphrase", "r@5"),
            )
        ]
        if not all(np.isnan(cells)):
            lines.append(f"  {label:<28}{cells[0]:>10.3f}{cells[1]:>10.3f}{cells[2]:>11.3f}{cells[3]:>10.3f}")
    return lines
