"""``mmrec search`` (text -> videos, optionally as a contact sheet) and ``mmrec recommend`` (history -> videos)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from multimodal_rec.cli.common import (
    FILTER_EXPR_HELP,
    LOG,
    Subparsers,
    add_command,
    add_synonyms_flag,
    add_text_backend,
    load_recommender,
    positive_int,
    print_hits,
    print_json,
)
from multimodal_rec.errors import UserError


def _filters(rec: Any, exprs: Sequence[str]) -> dict[str, Any] | None:
    from multimodal_rec.serving.filters import parse_filter_exprs

    return parse_filter_exprs(exprs, rec.catalog) or None


def cmd_search(a: argparse.Namespace) -> None:
    if a.contact_sheet and len(a.query) != 1:
        raise UserError("--contact-sheet draws the hits of one query: give exactly one")
    rec = load_recommender(a.bundle, a.synonyms, a.text_backend)
    for q in a.query:
        if not rec.query_info(q)["in_vocabulary"]:
            LOG.warning("query %r has no word the text model knows (it reads English only): its hits are noise", q)
    results = _search_results(rec, a)
    if a.contact_sheet:
        from multimodal_rec.serving.contact_sheet import rows_for_hits, write_contact_sheet

        rows = rows_for_hits(rec, results[0])
        title = f"query: {a.query[0]!r}"
        sheet = write_contact_sheet(rows, a.contact_sheet, frames=a.sheet_frames, size=a.sheet_px, title=title)
        LOG.info("contact sheet of %d hits written to %s", len(results[0]), sheet)
    if a.json:
        # one shape for any number of queries: "results", one entry per query; "hits" (the first query's) is kept
        # for one query, as before
        out: dict[str, Any] = {
            "results": [{"query": q, "hits": [h.to_dict() for h in hs]} for q, hs in zip(a.query, results, strict=True)]
        }
        if len(a.query) == 1:
            out["hits"] = out["results"][0]["hits"]
        if rec.synonyms.info:
            out["synonyms"] = rec.synonyms.info
        print_json(out)
        return
    for q, hits in zip(a.query, results, strict=True):
        print_hits(f"search: {q!r}", hits)


def _search_results(rec: Any, a: argparse.Namespace) -> list[list[Any]]:
    """Each query's hits: videos (each with its best moment), or with ``--moments`` the best segments."""
    filters = _filters(rec, a.filter)
    if a.moments:
        from multimodal_rec.serving.moments import check_moments_mode

        check_moments_mode(a.mode)
        return [rec.search_moments(q, k=a.k, filters=filters, min_score=a.min_score) for q in a.query]
    return rec.search_batch(a.query, k=a.k, filters=filters, min_score=a.min_score, mode=a.mode)


def add_search(sub: Subparsers) -> None:
    s = add_command(sub, "search", "text -> videos", cmd_search)
    s.add_argument("--bundle", required=True)
    s.add_argument("query", nargs="+", help="one or more text queries")
    s.add_argument("-k", type=int, default=10, help="hits per query (1..1000)")
    s.add_argument("--filter", action="append", default=[], metavar="EXPR", help=FILTER_EXPR_HELP)
    s.add_argument(
        "--min-score",
        type=float,
        default=None,
        metavar="S",
        help="drop hits scoring below S (compare the bundle's noise_score; the text model reads English only)",
    )
    s.add_argument(
        "--moments",
        action="store_true",
        help="segment-level hits: the best-matching moments of long videos (a video once per matching segment)",
    )
    s.add_argument(
        "--mode",
        choices=("vector", "lexical", "hybrid"),
        default=None,
        help="vector (text tower), lexical (BM25 over the catalog's title/description/tags) or hybrid (both, fused "
        "by reciprocal rank); default: hybrid when the catalog has text, else vector",
    )
    add_synonyms_flag(s)
    add_text_backend(s)
    s.add_argument("--contact-sheet", metavar="PNG", help="also draw the hits as rows of sampled frames into PNG")
    s.add_argument("--sheet-frames", type=positive_int, default=6, help="frames per contact-sheet row (default 6)")
    s.add_argument("--sheet-px", type=positive_int, default=96, help="contact-sheet frame size in px (default 96)")


def cmd_recommend(a: argparse.Namespace) -> None:
    rec = load_recommender(a.bundle, a.synonyms, a.text_backend)
    ids = a.history_ids
    read = rec.resolve_history(a.history, history_ids=ids)
    _note_resolution(read.resolved, read.unknown)
    hits = rec.recommend(
        a.history,
        k=a.k,
        exclude=a.exclude or (),
        filters=_filters(rec, a.filter),
        exclude_seen=not a.include_seen,
        history_ids=ids,
    )
    why = rec.explain(a.history, history_ids=ids)
    if a.json:
        attention = [{"text": t, "weight": w} for t, w in why]
        synonyms = {"synonyms": rec.synonyms.info} if rec.synonyms.info else {}
        print_json({"hits": [h.to_dict() for h in hits], "attention": attention, **read.to_dict(), **synonyms})
        return
    print_hits(f"recommend for a history of {len(a.history)} items:", hits)
    top = max(why, key=lambda x: x[1])
    print(f"  because of: {top[0]!r} (attention {top[1]:.2f})")


def _note_resolution(resolved: dict[str, str], unknown: list[str], shown: int = 3) -> None:
    """One line on stderr: which history items were read as video ids, and which ids were left out (a warning)."""

    def names(items: list[str]) -> str:
        return ", ".join(items[:shown]) + (f" (+{len(items) - shown} more)" if len(items) > shown else "")

    read = names([f"{v} as {t!r}" for v, t in resolved.items()])
    if unknown:
        also = f"; read {read}" if resolved else ""
        LOG.warning("history: %d unknown video id(s) not used: %s%s", len(unknown), names(unknown), also)
    elif resolved:
        LOG.info("history: read video id(s) %s", read)


def add_recommend(sub: Subparsers) -> None:
    s = add_command(sub, "recommend", "user history -> videos", cmd_recommend)
    s.add_argument("--bundle", required=True)
    s.add_argument(
        "--history",
        nargs="+",
        required=True,
        help="texts or video ids the user engaged with, oldest first (a catalog video id is read as its title)",
    )
    s.add_argument(
        "--history-ids",
        action="store_true",
        help="every --history item is a video id: unknown ids are reported on stderr and not used",
    )
    s.add_argument("--exclude", nargs="*", help="video ids not to recommend")
    s.add_argument("-k", type=int, default=10, help="hits (1..1000)")
    s.add_argument("--filter", action="append", default=[], metavar="EXPR", help=FILTER_EXPR_HELP)
    s.add_argument(
        "--include-seen",
        action="store_true",
        help="also recommend videos the history names (an item equal to a video id or title); skipped by default",
    )
    add_synonyms_flag(s)
    add_text_backend(s)
