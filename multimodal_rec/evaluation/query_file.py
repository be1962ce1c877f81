"""A platform's own search queries, judged in a CSV file, run through ``Recommender.search``: P@K, R@K, NDCG@K, MRR.

The file (``mmrec eval --queries FILE.csv --bundle B``) has a ``query`` column and either

- a ``video_id`` column: each row names one relevant video of its query (several rows per query: several relevant
  videos); ids the bundle does not serve are dropped with a warning giving their count (a judged video may have been
  removed since), and refused when none of the file's ids is served (the wrong bundle, most likely); or
- attribute columns (every other column, e.g. ``color,shape,motion``), matched against the catalog metadata columns of
  the same names as the synthetic world's semantic queries are: a video is relevant when each attribute the row gives
  equals its catalog value (as strings, surrounding spaces aside, case-sensitive); an empty cell constrains nothing.
  Several rows of one query: a video matching any of them is relevant. Queries no served video matches are dropped
  with a warning.

Every query is answered by ``rec.search_batch(queries, k=depth, mode=mode)`` with ``depth = min(1000, videos)`` (the
search limit), so the figures are those of what a user of the search gets, in any mode and with the synonym file in
use. The metric definitions are :mod:`multimodal_rec.evaluation.metrics`' (``P@K = hits / K``, ``R@K = hits / R``,
NDCG@K over all ``R`` relevant videos, binary relevance); ``MRR`` is over the ``depth`` hits, 0 for a query whose
relevant videos are all below them (for a catalog of at most 1000 videos in vector mode, the full ranking).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multimodal_rec.errors import UserError
from multimodal_rec.evaluation.metrics import ranked_relevance_metrics
from multimodal_rec.serving.validation import MAX_K

LOG = logging.getLogger(__name__)
DEFAULT_KS = (5, 10)
BATCH = 256  # queries per search_batch call
_NAMED = 3  # examples named in an error


@dataclass
class QuerySet:
    """Distinct queries (file order) with their relevant served video ids, and what was dropped on the way."""

    queries: list[str]
    relevant: list[set[str]]
    kind: str  # "video_id" or "attributes"
    columns: list[str] = field(default_factory=list)  # the attribute columns (kind "attributes")
    unknown_ids: int = 0  # rows naming a video the bundle does not serve (dropped)
    without_relevant: list[str] = field(default_factory=list)  # queries dropped: no served video is relevant


def read_table(source: str | Path | pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The query file as strings (empty cells ""), with its name for messages; one-line UserError when unreadable."""
    if isinstance(source, pd.DataFrame):
        df = source.fillna("").astype(str)
        df.columns = [str(c).strip() for c in df.columns]
        return df, "the query table"
    path = Path(source)
    if not path.is_file():
        raise UserError(f"query file {path} does not exist")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise UserError(f"query file {path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"query file {path} is not a readable CSV: {str(e).splitlines()[0]}") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df, str(path)


def read_queries(source: str | Path | pd.DataFrame, catalog: pd.DataFrame, served: Sequence[str]) -> QuerySet:
    """Parse and check a query file against the served part of a catalog (see the module docstring)."""
    df, name = read_table(source)
    if "query" not in df.columns:
        raise UserError(f"{name} has no 'query' column (columns: {', '.join(df.columns) or 'none'})")
    others = [c for c in df.columns if c != "query"]
    if not others:
        raise UserError(f"{name} needs a video_id column or attribute columns (e.g. color,shape,motion) beside 'query'")
    if "video_id" in others and len(others) > 1:
        extra = ", ".join(c for c in others if c != "video_id")
        raise UserError(f"{name} has a video_id column and other columns ({extra}): give relevant ids or attributes")
    if df.empty:
        raise UserError(f"{name} has no rows")
    df = df.apply(lambda col: col.str.strip())
    blank = np.flatnonzero(df["query"].to_numpy() == "")
    if len(blank):
        raise UserError(f"{name}: line {blank[0] + 2}: empty query ({len(blank)} rows without one)")
    if others == ["video_id"]:
        return _by_ids(df, name, set(served))
    return _by_attributes(df, name, others, catalog[catalog["video_id"].astype(str).isin(set(served))])


def _by_ids(df: pd.DataFrame, name: str, served: set[str]) -> QuerySet:
    """Rows ``query,video_id``: the relevant ids per query; ids not served dropped (refused if all are)."""
    ids = df["video_id"].to_numpy()
    empty = np.flatnonzero(ids == "")
    if len(empty):
        raise UserError(f"{name}: line {empty[0] + 2}: empty video_id ({len(empty)} rows without one)")
    known = np.array([v in served for v in ids], dtype=bool)
    if not known.any():
        examples = ", ".join(repr(v) for v in list(dict.fromkeys(ids))[:_NAMED])
        raise UserError(f"none of the {len(ids)} video ids in {name} is in the bundle (e.g. {examples})")
    unknown = int((~known).sum())
    if unknown:
        LOG.warning("%s: %d of %d rows name a video the bundle does not serve: dropped", name, unknown, len(ids))
    relevant: dict[str, set[str]] = {q: set() for q in df["query"]}  # every query, file order
    for q, v, ok in zip(df["query"], ids, known, strict=True):
        if ok:
            relevant[q].add(v)
    return _keep_relevant(name, relevant, QuerySet([], [], "video_id", unknown_ids=unknown))


def _by_attributes(df: pd.DataFrame, name: str, columns: list[str], catalog: pd.DataFrame) -> QuerySet:
    """Rows ``query,attr1,attr2,...``: a video is relevant when every non-empty attribute equals its catalog value."""
    missing = [c for c in columns if c not in catalog.columns or c == "video_id"]
    if missing:
        have = ", ".join(c for c in catalog.columns if c != "video_id")
        raise UserError(f"{name}: attribute column(s) {', '.join(missing)} not in the catalog (it has: {have})")
    values = df[columns].to_numpy()
    none = np.flatnonzero((values == "").all(1))
    if len(none):
        raise UserError(f"{name}: line {none[0] + 2}: no attribute value (every video would be relevant)")
    cat = catalog[columns].astype(str).apply(lambda col: col.str.strip()).to_numpy()  # [N, A]
    ids = catalog["video_id"].astype(str).to_numpy()
    relevant: dict[str, set[str]] = {q: set() for q in df["query"]}
    for q, want in zip(df["query"], values, strict=True):
        given = want != ""
        match = (cat[:, given] == want[given]).all(1)
        relevant[q].update(ids[match])
    return _keep_relevant(name, relevant, QuerySet([], [], "attributes", columns=columns))


def _keep_relevant(name: str, relevant: dict[str, set[str]], out: QuerySet) -> QuerySet:
    """Fill ``out`` with the queries that have a relevant served video; warn about the others, refuse if none."""
    out.without_relevant = [q for q, r in relevant.items() if not r]
    if len(out.without_relevant) == len(relevant):
        raise UserError(f"no query in {name} has a relevant video in the bundle ({len(relevant)} queries)")
    if out.without_relevant:
        LOG.warning(
            "%s: %d of %d queries have no relevant video in the bundle: left out (e.g. %r)",
            name,
            len(out.without_relevant),
            len(relevant),
            out.without_relevant[0],
        )
    out.queries = [q for q, r in relevant.items() if r]
    out.relevant = [relevant[q] for q in out.queries]
    return out


def check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """Distinct cut-offs in increasing order, each in [1, MAX_K]."""
    if not ks:
        raise UserError("give at least one K")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= MAX_K:
            raise UserError(f"K must be an integer in [1, {MAX_K}], got {k!r}")
    return tuple(sorted({int(k) for k in ks}))


def evaluate_queries(
    rec: Any, source: str | Path | pd.DataFrame, ks: Sequence[int] = DEFAULT_KS, mode: str | None = None
) -> dict[str, Any]:
    """Mean P@K, R@K, NDCG@K (each K of ``ks``) and MRR of ``rec.search`` over the judged queries of ``source``.

    ``mode``: vector, lexical or hybrid (None: the bundle's default, ``rec.search_mode``). The result also holds the
    per-query figures (``per_query``), what was dropped, and the synonyms file in use (``rec.synonyms.info``).
    """
    ks = check_ks(ks)
    qs = read_queries(source, rec.catalog, list(rec.row_of))
    mode = mode or rec.search_mode
    depth = min(MAX_K, len(rec))
    ranked = np.zeros((len(qs.queries), depth), dtype=bool)  # [n, depth]: is the hit at each position relevant
    for start in range(0, len(qs.queries), BATCH):
        hits = rec.search_batch(qs.queries[start : start + BATCH], k=depth, mode=mode)
        for i, row in enumerate(hits, start=start):
            ranked[i, : len(row)] = [h.video_id in qs.relevant[i] for h in row]
    n_rel = np.array([len(r) for r in qs.relevant])
    per_k = [ranked_relevance_metrics(ranked, n_rel, k) for k in ks]
    per_query = {m: v for res in per_k for m, v in res.items() if m.split("@")[0] in ("p", "r", "ndcg", "rr")}
    metrics = {("mrr" if m == "rr" else m): float(v.mean()) for m, v in per_query.items()}
    rows = [
        {"query": q, "relevant": int(n), **{m: float(v[i]) for m, v in per_query.items()}}
        for i, (q, n) in enumerate(zip(qs.queries, n_rel, strict=True))
    ]
    return {
        "file": "the query table" if isinstance(source, pd.DataFrame) else str(source),
        "kind": qs.kind,
        "attributes": qs.columns,
        "mode": mode,
        "ks": list(ks),
        "depth": depth,
        "videos": len(rec),
        "queries": len(qs.queries),
        "relevant": float(n_rel.mean()),
        "metrics": metrics,
        "dropped": {"unknown_video_ids": qs.unknown_ids, "queries_without_relevant": len(qs.without_relevant)},
        "synonyms": rec.synonyms.info if hasattr(rec, "synonyms") else None,
        "per_query": rows,
    }


def format_queries(res: dict[str, Any]) -> str:
    """The evaluation of a query file as a few lines of text."""
    ks, m = res["ks"], res["metrics"]
    judged = "relevant video ids" if res["kind"] == "video_id" else f"attributes {', '.join(res['attributes'])}"
    lines = [
        f"{res['file']}: {res['queries']} queries ({judged}; {res['relevant']:.1f} relevant per query), "
        f"{res['videos']} videos, mode {res['mode']}",
    ]
    drop = res["dropped"]
    if drop["unknown_video_ids"] or drop["queries_without_relevant"]:
        lines.append(
            f"  dropped: {drop['unknown_video_ids']} rows naming a video not in the bundle, "
            f"{drop['queries_without_relevant']} queries with no relevant video"
        )
    if res.get("synonyms"):
        s = res["synonyms"]
        lines.append(f"  synonyms: {s['path']} ({s['rules']} rules, sha256 {s['sha256'][:12]})")
    head = "".join(f"{f'{name}@{k}':>9}" for k in ks for name in ("P", "R", "nDCG"))
    lines.append(f"  {head}{'MRR':>9}")
    cells = "".join(f"{m[f'{name}@{k}']:>9.3f}" for k in ks for name in ("p", "r", "ndcg"))
    lines.append(f"  {cells}{m['mrr']:>9.3f}")
    return "\n".join(lines)
