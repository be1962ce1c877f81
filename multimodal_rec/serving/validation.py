"""Argument checks of the serving API: every bad input becomes a one-line UserError before any work is done.

The limits bound what one call may cost: ``k`` (hits asked for) at most :data:`MAX_K`, a query (or history item) at
most :data:`MAX_QUERY_CHARS` characters, a history at most :data:`MAX_HISTORY` items, ``exclude`` at most
:data:`MAX_EXCLUDE` video ids. They are the same for the Python API, the CLI and HTTP (whose request models take
them as defaults). The HTTP service answers a UserError with a 400 and the same line.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multimodal_rec.errors import UserError

MAX_K = 1000  # hits one query may ask for
MAX_EXCLUDE = 10_000  # video ids one call may exclude (each costs a lookup and a mask write)
MAX_QUERY_CHARS = 1000  # characters of one query or history item (the text model reads its first 32 tokens anyway)
MAX_HISTORY = 500  # items of one history


def check_k(k: Any) -> int:
    """``k`` as an int in [1, MAX_K]."""
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1:
        raise UserError(f"k must be a positive integer, got {k!r}")
    if k > MAX_K:
        raise UserError(f"k must be at most {MAX_K}, got {k}")
    return int(k)


def check_text(text: Any, what: str = "query") -> str:
    """A non-blank string of at most :data:`MAX_QUERY_CHARS` characters."""
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{what} must be a non-empty string")
    if len(text) > MAX_QUERY_CHARS:
        raise UserError(f"{what} must have at most {MAX_QUERY_CHARS} characters, got {len(text)}")
    return text


def check_texts(texts: Any) -> list[str]:
    """A non-empty list of queries, each a non-blank string."""
    if isinstance(texts, str) or not texts:
        raise UserError("no queries given")
    return [check_text(t) for t in texts]


def check_history(history: Any) -> list[str]:
    """A non-empty list of at most :data:`MAX_HISTORY` non-blank texts (oldest first)."""
    if isinstance(history, str) or not isinstance(history, Sequence) or not history:
        raise UserError("history must be a non-empty list of texts (oldest first)")
    if len(history) > MAX_HISTORY:
        raise UserError(f"history must have at most {MAX_HISTORY} items, got {len(history)}")
    for t in history:
        check_text(t, "each history item")
    return list(history)


def id_list(ids: Any, what: str, limit: int | None = None) -> list[str]:
    """A list of video ids (strings); with ``limit``, at most that many (read no further than one past it)."""
    if isinstance(ids, str) or not isinstance(ids, Iterable):
        raise UserError(f"{what} must be a list of video ids, got {type(ids).__name__}")
    out = list(ids if limit is None else islice(ids, limit + 1))
    if limit is not None and len(out) > limit:
        raise UserError(f"{what} may list at most {limit} video ids")
    bad = next((v for v in out if not isinstance(v, str)), None)
    if bad is not None:
        raise UserError(f"{what}: video ids are strings, got {type(bad).__name__} {bad!r}")
    return out


def check_exclude(ids: Any) -> list[str]:
    """The ``exclude`` argument: at most :data:`MAX_EXCLUDE` video ids."""
    return id_list(ids, "exclude", MAX_EXCLUDE)


def check_query_vectors(xq: Any, d: int) -> np.ndarray:
    """A finite, non-empty ``[n, d]`` float32 array."""
    xq = np.asarray(xq, dtype=np.float32)
    if xq.ndim != 2 or xq.shape[1] != d or not len(xq) or not np.isfinite(xq).all():
        raise UserError(f"query vectors must be a finite [n, {d}] array, got shape {xq.shape}")
    return xq


def check_embeddings(embeddings: Any, n: int, d: int) -> np.ndarray:
    """Given embeddings of videos to add: ``[n, d]``, finite, non-zero; returned L2-normalised."""
    xb = np.asarray(embeddings, dtype=np.float32)
    if xb.ndim != 2 or xb.shape != (n, d):
        raise UserError(f"embeddings must have shape ({n}, {d}) (one row per video), got {xb.shape}")
    norms = np.linalg.norm(xb, axis=1, keepdims=True)
    if not np.isfinite(xb).all() or (norms < 1e-12).any():
        raise UserError("embeddings must be finite and non-zero")
    return xb / norms


def new_videos(catalog: Any, served: pd.DataFrame, need_paths: bool) -> pd.DataFrame:
    """The videos to add (a DataFrame or a catalog file), checked against the ``served`` catalog's columns.

    Returns a fresh frame with string ``video_id``s and, where paths are given, an ``abs_path`` column.
    """
    from multimodal_rec.data.tables import read_catalog

    if isinstance(catalog, str | Path):
        df = read_catalog(catalog)  # paths relative to the catalog file
    elif isinstance(catalog, pd.DataFrame):
        df = catalog.copy().reset_index(drop=True)
        if "video_id" not in df.columns or (need_paths and "path" not in df.columns):
            need = "video_id and path columns" if need_paths else "a video_id column"
            raise UserError(f"videos to add need {need} (got: {', '.join(map(str, df.columns))})")
        if "path" in df.columns:
            df["abs_path"] = [str(Path(p).resolve()) if isinstance(p, str) and p else "" for p in df["path"]]
    else:
        raise UserError(f"videos to add: expected a DataFrame or a catalog file, got {type(catalog).__name__}")
    if df.empty:
        raise UserError("no videos to add")
    if df["video_id"].isna().any():
        raise UserError("videos to add: video_id must not be empty")
    df["video_id"] = df["video_id"].astype(str)
    dup = df["video_id"][df["video_id"].duplicated()]
    if len(dup):
        raise UserError(f"videos to add repeat video_id {dup.iloc[0]!r}")
    extra = [c for c in df.columns if c not in set(served.columns) | {"abs_path"}]
    if extra:
        raise UserError(f"videos to add have column(s) {', '.join(map(str, extra))} the bundle's catalog lacks")
    for c in df.columns.drop("abs_path", errors="ignore"):
        old, new = served[c], df[c]
        if pd.api.types.is_numeric_dtype(old) and not new.isna().all() and not pd.api.types.is_numeric_dtype(new):
            raise UserError(f"videos to add: column {c!r} must be numeric like the bundle's catalog")
    return df
