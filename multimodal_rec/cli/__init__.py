"""``mmrec``: thin command line over the library. Parse, call a typed function, print (``--json`` for machines).

One module per command group registers its subcommands (``add_<command>``) and runs them (``cmd_<command>``);
this module assembles the parser and runs a command with the shared error handling and exit codes:
0 done, 2 a :class:`~multimodal_rec.errors.UserError` or :class:`~multimodal_rec.errors.InfrastructureError` (one line
on stderr, no traceback), 130 interrupted; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Sequence

import multimodal_rec
from multimodal_rec.cli import bench, data, encode, explain, init, query, serve, train
from multimodal_rec.cli import eval as evaluate
from multimodal_rec.errors import InfrastructureError, UserError

# the disk failing under a write (full, quota, read-only, I/O error): one line, exit 2; the writers replace files and
# bundles only by a rename after a complete write, so what was there before is intact
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})

# in `mmrec --help` order
COMMANDS = (
    data.add_synth,
    init.add_init,
    train.add_train,
    encode.add_encode,
    encode.add_export,
    query.add_search,
    query.add_recommend,
    explain.add_explain,
    evaluate.add_eval,
    serve.add_serve,
    bench.add_bench,
    data.add_presets,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``mmrec`` parser: one subcommand per entry of :data:`COMMANDS`."""
    p = argparse.ArgumentParser(prog="mmrec", description="Text-to-video retrieval and recommendation engine.")
    p.add_argument("--version", action="version", version=f"mmrec {multimodal_rec.__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return p


def _quiet_libraries(quiet: bool) -> dict[str, str | None]:
    """Offline model loading and no third-party noise (set before any command imports transformers).

    Under ``--quiet`` also no transformers warnings and no ffmpeg/decord messages, in this process and the workers it
    starts (they inherit the environment). Returns the variables set for ``--quiet`` with their previous values.
    """
    from multimodal_rec.data.frames import QUIET_ENV

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request: noise in bench serve
    quiet_env = {QUIET_ENV: "1", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    saved = {k: os.environ.get(k) for k in quiet_env} if quiet else {}
    if quiet:
        os.environ.update(quiet_env)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars on every model load are noise here
    if quiet:
        hf_logging.set_verbosity_error()
    return saved


def _restore(saved: dict[str, str | None]) -> None:
    """Put back the environment ``_quiet_libraries`` changed (``main`` may be called in-process, e.g. by tests)."""
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``mmrec`` command; returns the exit code (0 done, 2 bad input, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,  # progress on stderr, also with --json
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    saved = _quiet_libraries(args.quiet)
    try:
        args.fn(args)
    except (UserError, InfrastructureError) as e:
        print(f"mmrec {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in DISK_ERRNOS:
            raise  # not the disk: a bug, with its traceback
        where = f" ({e.filename})" if e.filename else ""
        print(f"mmrec {args.command}: error: disk: {e.strerror or e}{where}; nothing was replaced", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmrec {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        _restore(saved)
    return 0
