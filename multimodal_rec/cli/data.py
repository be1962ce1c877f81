"""``mmrec synth`` (the synthetic demo world) and ``mmrec presets`` (the named configs)."""

from __future__ import annotations

import argparse
import sys

from multimodal_rec.cli.common import Subparsers, add_command, positive_int, print_json
from multimodal_rec.errors import UserError


def cmd_synth(a: argparse.Namespace) -> None:
    from multimodal_rec.data.synth import make_world

    bar = None
    if not a.quiet:
        from tqdm import tqdm

        bar = tqdm(total=a.videos, desc="write videos", unit="video", file=sys.stderr, dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.n = done
            bar.refresh()

    try:
        s = make_world(a.out, videos=a.videos, users=a.users, seed=a.seed, holdout=a.holdout, progress=progress)
    except ValueError as e:
        raise UserError(str(e)) from None
    finally:
        if bar is not None:
            bar.close()
    info = {
        "out": str(s.out),
        "videos": s.videos,
        "users": s.users,
        "interactions": s.interactions,
        "captions": s.captions,
    }
    if a.json:
        print_json(info)
    else:
        print(f"wrote {s.videos} videos, {s.captions} captions, {s.users} users / {s.interactions} events to {s.out}")


def add_synth(sub: Subparsers) -> None:
    s = add_command(sub, "synth", "make the synthetic demo world (videos, catalog, captions, interactions)", cmd_synth)
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--videos", type=positive_int, default=756, help="number of clips (default 756: 6 per combination)")
    s.add_argument("--users", type=int, default=300, help="number of users (default 300)")
    s.add_argument("--seed", type=int, default=0, help="random seed: same seed, same files")
    s.add_argument(
        "--holdout", type=float, default=0.34, help="share of each combination's videos held out (split=test)"
    )


def cmd_presets(a: argparse.Namespace) -> None:
    from multimodal_rec.config import CONFIG_DIR, list_presets

    names = list_presets()
    if a.json:
        print_json({"presets": names, "dir": str(CONFIG_DIR)})
    else:
        for n in names:
            print(f"{n}\t{CONFIG_DIR / (n + '.yaml')}")


def add_presets(sub: Subparsers) -> None:
    add_command(sub, "presets", "list the named config presets", cmd_presets)
