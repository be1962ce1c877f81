"""Strict loading of pretrained weights: a file that does not fit its model is an error naming what did not match.

A wrong file loaded with ``strict=False`` silently leaves a random trunk; here every key of the model must come
from the file and every key of the file must land in the model, with the same shape, except under the prefixes
the caller declares harmless (a classifier head the trunk drops, a pooler the text tower does not use).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence

LOG = logging.getLogger(__name__)
SHOWN = 3  # keys named per kind in a message; the count says how many in all


class PretrainedWeightsError(ValueError):
    """Pretrained weights that cannot be read or do not fit the model: one line naming what did not match.

    A ``ValueError`` because the towers import nothing from ``multimodal_rec``: ``create_model`` reports the
    towers' ``ValueError`` as a one-line ``UserError`` (exit code 2 in the CLI).
    """


def ignored(key: str, prefixes: Sequence[str]) -> bool:
    """Whether ``key`` lies under one of the harmless ``prefixes``."""
    return any(key.startswith(p) for p in prefixes)


def _some(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:SHOWN])
    return f"{len(keys)} ({shown})" if len(keys) <= SHOWN else f"{len(keys)} (e.g. {shown}, ...)"


def check_match(
    source: str,
    missing: Iterable[str],
    unexpected: Iterable[str],
    mismatched: Iterable[tuple[str, Sequence[int], Sequence[int]]],
    ignore: Sequence[str],
    flag: str,
) -> None:
    """Raise :class:`PretrainedWeightsError` unless every mismatch lies under an ``ignore`` prefix.

    ``mismatched`` holds ``(key, shape in file, shape in model)``; ``flag`` is the option that allows a remainder.
    """
    missing, unexpected = list(missing), list(unexpected)
    mismatched = list(mismatched)
    allowed = [k for k in missing + unexpected + [m[0] for m in mismatched] if ignored(k, ignore)]
    missing = [k for k in missing if not ignored(k, ignore)]
    unexpected = [k for k in unexpected if not ignored(k, ignore)]
    mismatched = sorted(m for m in mismatched if not ignored(m[0], ignore))
    if allowed:
        LOG.info("%s: left out under %s=%s: %s", source, flag, list(ignore), _some(allowed))
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"missing {_some(missing)}")
    if unexpected:
        parts.append(f"unexpected {_some(unexpected)}")
    if mismatched:
        shapes = [f"{k} {list(a)} in the file vs {list(b)} in the model" for k, a, b in mismatched[:SHOWN]]
        more = f" (and {len(mismatched) - SHOWN} more)" if len(mismatched) > SHOWN else ""
        parts.append(f"{len(mismatched)} wrong shape: {', '.join(shapes)}{more}")
    raise PretrainedWeightsError(
        f"{source} does not fit the model: {'; '.join(parts)} "
        f"(a known-harmless remainder can be allowed by key prefix with {flag})"
    )


@contextlib.contextmanager
def no_load_report() -> Iterator[None]:
    """Drop transformers' load report (a table of missing/unexpected keys) while loading a trunk: our check says it
    in one line. A filter, not a level: transformers reads the level of that logger to decide on other warnings."""
    hf_logger = logging.getLogger("transformers.modeling_utils")
    report_filter = _DropLoadReport()
    hf_logger.addFilter(report_filter)
    try:
        yield
    finally:
        hf_logger.removeFilter(report_filter)


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)
