"""What every command shares: registering a subcommand, JSON and hit printing, argument types, ``--set`` pairs."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from multimodal_rec.errors import UserError
from multimodal_rec.serving.results import moment_text

LOG = logging.getLogger("mmrec")
FILTER_EXPR_HELP = (
    "metadata filter: COLUMN=VALUE (equal; A,B,C = any of them), COLUMN<=VALUE or COLUMN>=VALUE (inclusive, numeric "
    "or date columns); repeatable, all must hold, e.g. --filter color=red,blue --filter 'duration_s<=60'"
)
Subparsers = Any  # argparse's private _SubParsersAction: what ``add_subparsers`` returns
Command = Callable[[argparse.Namespace], None]


def add_command(sub: Subparsers, name: str, help: str, fn: Command) -> argparse.ArgumentParser:
    """Register subcommand ``name`` running ``fn``, with the flags every command has (``--json``, ``--quiet``)."""
    sp = sub.add_parser(name, help=help, description=help)
    sp.set_defaults(fn=fn)
    sp.add_argument("--json", action="store_true", help="print one JSON object (machine-readable)")
    sp.add_argument("--quiet", "-q", action="store_true", help="no progress bars, warnings only")
    return sp


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def print_json(obj: Any) -> None:
    """One JSON object on stdout (numpy scalars and paths included)."""
    print(json.dumps(obj, default=_json_default, ensure_ascii=False))


def print_hits(title: str, hits: Sequence[Any], cols: Sequence[str] = ("title",)) -> None:
    """Ranked hits, one per line: rank, id, score, the moment (search hits: ``mm:ss–mm:ss``) and the named metadata
    columns."""
    print(title)
    for h in hits:
        meta = "  ".join(str(h.metadata.get(c, "")) for c in cols if c in h.metadata)
        at = f"{moment_text(h.moment)}  " if getattr(h, "moment", None) else ""
        print(f"  {h.rank:>3}. {h.video_id:<10} {h.score:+.3f}  {at}{meta}")


def positive_int(s: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs as a dict, each value parsed as YAML (``3`` is an int, ``true`` a bool)."""
    import yaml

    out: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise UserError(f"--set expects KEY=VALUE (e.g. train.epochs=3), got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


SYNONYMS_HELP = (
    "a synonyms / query-rewrite file in Solr's synonyms.txt format ('a, b, c': b and c read as a; 'a, b => c'; "
    "# comments), applied to query and free-text history words; off by default"
)


def add_synonyms_flag(sp: argparse.ArgumentParser) -> None:
    """``--synonyms FILE`` (commands that answer queries)."""
    sp.add_argument("--synonyms", metavar="FILE", default=None, help=SYNONYMS_HELP)


def load_recommender(bundle: str, synonyms: str | None = None, text_backend: str | None = None) -> Any:
    """The :class:`Recommender` of a bundle directory (imported here: torch loads only for commands that need it),
    rewriting queries with the ``synonyms`` file when one is given (read first: a malformed file fails at once) and
    encoding them with ``text_backend`` (None: torch)."""
    from multimodal_rec.serving.recommender import Recommender
    from multimodal_rec.serving.synonyms import load_synonyms

    rules = load_synonyms(synonyms) if synonyms else None
    rec = Recommender.load(bundle, text_backend=text_backend)
    rec.synonyms.set(rules)
    return rec


TEXT_BACKEND_CHOICES = ("torch", "onnx", "onnx-int8")  # = serving.text_backends.TEXT_BACKENDS (not imported: torch)
TEXT_BACKEND_HELP = (
    "what runs the text trunk for queries: torch (default), onnx or onnx-int8 (ONNX Runtime on the CPU, needs the "
    "onnx extra; the graph is exported on first use and cached in the bundle's onnx/ directory)"
)


def add_text_backend(s: argparse.ArgumentParser) -> None:
    """``--text-backend`` (search, recommend, serve)."""
    s.add_argument("--text-backend", choices=TEXT_BACKEND_CHOICES, default=None, help=TEXT_BACKEND_HELP)
