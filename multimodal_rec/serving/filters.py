"""Metadata filters over the catalog: ``{"column": condition}`` -> a boolean row mask for the FAISS ID selector.

A condition is one of

- a scalar: equality (``"language": "en"``, ``"fps": 24``);
- a list (or set) of scalars: any of them (``"color": ["red", "blue"]``);
- a range ``(lo, hi)`` tuple, or a ``{"min": lo, "max": hi}`` dict (JSON has no tuples), inclusive, ``None``
  for an open end (``"duration_s": (None, 60)``); only for numeric and datetime columns. A two-item list with a
  ``None`` (JSON ``[null, 60]``) is the same open range: null is never a value to filter on, so it cannot mean
  "any of".

All conditions must hold (AND). Rows whose value is missing (NaN / None) never pass a condition.
"""

from __future__ import annotations

import logging
import numbers
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from multimodal_rec.errors import UserError

LOG = logging.getLogger(__name__)
Filters = Mapping[str, Any]
MAX_VALUES = 1000  # values in one "any of" list


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _kind(col: pd.Series) -> str:
    """``bool``, ``number``, ``datetime`` or ``text`` (anything else is compared as text)."""
    if pd.api.types.is_bool_dtype(col):
        return "bool"
    if pd.api.types.is_numeric_dtype(col):
        return "number"
    if pd.api.types.is_datetime64_any_dtype(col):
        return "datetime"
    return "text"


def _scalar(name: str, kind: str, v: Any) -> Any:
    """Check ``v`` against the column's kind; the value to compare with."""
    if kind == "number" and _is_number(v):
        return v
    if kind == "bool" and isinstance(v, bool | np.bool_):
        return bool(v)
    if kind == "text" and isinstance(v, str):
        return v
    if kind == "datetime" and isinstance(v, str | pd.Timestamp):
        try:
            return pd.Timestamp(v)
        except ValueError:
            raise UserError(f"filter {name!r}: {v!r} is not a date/time") from None
    want = {"number": "a number", "bool": "true or false", "text": "a string", "datetime": "a date string"}[kind]
    raise UserError(f"filter {name!r}: expected {want}, got {type(v).__name__} {str(v)[:40]!r}")


def _range(name: str, kind: str, col: pd.Series, lo: Any, hi: Any) -> np.ndarray:
    if kind not in ("number", "datetime"):
        raise UserError(f"filter {name!r}: a range needs a numeric or date column, {name!r} holds {kind}")
    if lo is None and hi is None:
        raise UserError(f"filter {name!r}: a range needs at least one bound (min or max)")
    lo = None if lo is None else _scalar(name, kind, lo)
    hi = None if hi is None else _scalar(name, kind, hi)
    if lo is not None and hi is not None and lo > hi:
        raise UserError(f"filter {name!r}: empty range, min {lo} > max {hi}")
    ok = col.notna()
    if lo is not None:
        ok &= col >= lo
    if hi is not None:
        ok &= col <= hi
    return ok.to_numpy(dtype=bool)


def condition_mask(catalog: pd.DataFrame, name: Any, cond: Any) -> np.ndarray:
    """Rows of ``catalog`` where column ``name`` satisfies ``cond`` (see the module docstring)."""
    if not isinstance(name, str) or name not in catalog.columns:
        known = ", ".join(map(str, catalog.columns))
        raise UserError(f"unknown filter column {str(name)[:60]!r} (known: {known})")
    col = catalog[name]
    kind = _kind(col)
    if isinstance(cond, tuple):
        if len(cond) != 2:
            raise UserError(f"filter {name!r}: a range is a (min, max) pair, got {len(cond)} values")
        return _range(name, kind, col, *cond)
    if isinstance(cond, Mapping):
        extra = set(cond) - {"min", "max"}
        if extra or not cond:
            raise UserError(f"filter {name!r}: a range object has keys min and/or max, got {sorted(map(str, cond))}")
        return _range(name, kind, col, cond.get("min"), cond.get("max"))
    if isinstance(cond, list) and len(cond) == 2 and None in cond:  # [null, hi] / [lo, null]: an open range
        return _range(name, kind, col, *cond)
    if isinstance(cond, list | set | frozenset):
        if not cond:
            raise UserError(f"filter {name!r}: an empty list of values matches nothing")
        if len(cond) > MAX_VALUES:
            raise UserError(f"filter {name!r}: at most {MAX_VALUES} values, got {len(cond)}")
        if None in cond:
            raise UserError(f"filter {name!r}: null is not a value to filter on (a range is [min, max], null = open)")
        values = [_scalar(name, kind, v) for v in cond]
        return col.isin(values).to_numpy(dtype=bool)
    if cond is None:
        raise UserError(f"filter {name!r}: null is not a value to filter on")
    return (col == _scalar(name, kind, cond)).fillna(False).to_numpy(dtype=bool)


def filter_mask(catalog: pd.DataFrame, filters: Filters | None) -> np.ndarray | None:
    """Rows passing every condition of ``filters`` (``[n]`` bool), or None when there is nothing to filter."""
    if filters is None:
        return None
    if not isinstance(filters, Mapping):
        raise UserError(f"filters must be a mapping of column -> condition, got {type(filters).__name__}")
    if not filters:
        return None
    mask = np.ones(len(catalog), dtype=bool)
    for name, cond in filters.items():
        try:
            mask &= condition_mask(catalog, name, cond)
        except (TypeError, ValueError, OverflowError) as e:  # a value pandas cannot compare: still the user's
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"filter {str(name)[:60]!r}: cannot compare with {str(cond)[:40]!r} ({why})") from None
    return mask


_EXPR = re.compile(r"\s*([^<>=]+?)\s*(<=|>=|=)\s*(.*?)\s*")


def _typed(name: str, kind: str, raw: str) -> Any:
    """A command-line string as the column's type (``"60"`` -> 60 for a numeric column)."""
    if kind == "number":
        for cast in (int, float):
            try:
                return cast(raw)
            except ValueError:
                pass
        raise UserError(f"filter {name!r}: expected a number, got {raw[:40]!r}")
    if kind == "bool":
        if raw.lower() not in ("true", "false", "1", "0"):
            raise UserError(f"filter {name!r}: expected true or false, got {raw[:40]!r}")
        return raw.lower() in ("true", "1")
    return raw


def parse_filter_exprs(exprs: Sequence[str], catalog: pd.DataFrame) -> dict[str, Any]:
    """Command-line filter expressions -> a filters dict, values typed by the catalog column.

    ``COLUMN=VALUE`` (equal; ``A,B,C`` = any of them), ``COLUMN<=VALUE`` / ``COLUMN>=VALUE`` (inclusive bounds; two
    on one column make a range).
    """
    out: dict[str, Any] = {}
    for expr in exprs:
        m = _EXPR.fullmatch(expr)
        if m is None or not m.group(3):
            raise UserError(f"--filter expects COLUMN=VALUE, COLUMN<=VALUE or COLUMN>=VALUE, got {expr[:80]!r}")
        name, op, raw = m.groups()
        if name not in catalog.columns:
            raise UserError(f"unknown filter column {name[:60]!r} (known: {', '.join(map(str, catalog.columns))})")
        kind = _kind(catalog[name])
        if op == "=":
            values = [_typed(name, kind, v.strip()) for v in raw.split(",")]
            out[name] = values[0] if len(values) == 1 else values
            continue
        lo, hi = out.get(name) if isinstance(out.get(name), tuple) else (None, None)
        bound = _typed(name, kind, raw)
        out[name] = (bound, hi) if op == ">=" else (lo, bound)
    return out
