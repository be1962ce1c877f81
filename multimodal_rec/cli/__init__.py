"""``mmrec``: thin command line over the library. Parse, call a typed function, print (``--json`` for machines).

One module per command group registers its subcommands (``add_<command>``) and runs them (``cmd_<command>``);
this module assembles the parser and runs a command with the shared error handling and exit codes:
0 done, 2 a :class:`~multimodal_rec.errors.UserError` or :class:`~multimodal_rec.errors.InfrastructureError` (one line
on stderr, no traceback), 130 interrupted; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from multimodal_rec.cli import bench, data, encode, query, serve, train
from multimodal_rec.cli import eval as evaluate
from multimodal_rec.errors import InfrastructureError, UserError

# in `mmrec --help` order
COMMANDS = (
    data.add_synth,
    train.add_train,
    encode.add_encode,
    encode.add_export,
    query.add_search,
    query.add_recommend,
    evaluate.add_eval,
    serve.add_serve,
    bench.add_bench,
    data.add_presets,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``mmrec`` parser: one subcommand per entry of :data:`COMMANDS`."""
    p = argparse.ArgumentParser(prog="mmrec", description="Text-to-video retrieval and recommendation engine.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return p


def _quiet_libraries() -> None:
    """Offline model loading and no third-party noise (set before any command imports transformers)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request: noise in bench serve


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``mmrec`` command; returns the exit code (0 done, 2 bad input, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet or args.json else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    _quiet_libraries()
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars on every model load are noise here
        args.fn(args)
    except (UserError, InfrastructureError) as e:
        print(f"mmrec {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmrec {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
