"""``mmrec synth`` (the synthetic demo world) and ``mmrec presets`` (the named configs)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from multimodal_rec.cli.common import Subparsers, add_command, positive_int, print_json
from multimodal_rec.errors import UserError


def _bar(total: int, quiet: bool) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A tqdm bar on stderr (none when ``quiet``): its ``progress(done, total)`` and ``close()``."""
    if quiet:
        return (lambda done, total: None), (lambda: None)
    from tqdm import tqdm

    bar = tqdm(total=total, desc="write videos", unit="video", file=sys.stderr, dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.n = done
        bar.refresh()

    return progress, bar.close


def cmd_synth(a: argparse.Namespace) -> None:
    if a.clip_dir:
        return _synth_clip_dir(a)
    if a.long is not None:
        return _synth_long(a)
    from multimodal_rec.data.synth import make_world

    progress, close = _bar(a.videos, a.quiet)
    try:
        s = make_world(a.out, videos=a.videos, users=a.users, seed=a.seed, holdout=a.holdout, progress=progress)
    except ValueError as e:
        raise UserError(str(e)) from None
    finally:
        close()
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


def _synth_long(a: argparse.Namespace) -> None:
    from multimodal_rec.data.synth.long import make_long_world

    progress, close = _bar(a.long, a.quiet)
    try:
        s = make_long_world(a.out, videos=a.long, parts=a.parts, seed=a.seed, progress=progress)
    except ValueError as e:
        raise UserError(str(e)) from None
    finally:
        close()
    if a.json:
        print_json({"out": str(s.out), "videos": s.videos, "parts": s.parts, "seconds": round(s.seconds, 3)})
    else:
        print(f"wrote {s.videos} long videos of {s.parts} parts ({s.seconds / 60:.1f} min of video) to {s.out}")


def _synth_clip_dir(a: argparse.Namespace) -> None:
    from multimodal_rec.data.synth.clip_dir import make_clip_dir

    out = make_clip_dir(a.out, seed=a.seed)
    if a.json:
        print_json({"out": str(out), "model_type": "clip", "random": True})
    else:
        print(f"wrote a randomly initialised CLIPModel directory to {out} (for trying --from-pretrained; no weights)")


def add_synth(sub: Subparsers) -> None:
    s = add_command(sub, "synth", "make the synthetic demo world (videos, catalog, captions, interactions)", cmd_synth)
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--videos", type=positive_int, default=756, help="number of clips (default 756: 6 per combination)")
    s.add_argument("--users", type=int, default=300, help="number of users (default 300)")
    s.add_argument("--seed", type=int, default=0, help="random seed: same seed, same files")
    s.add_argument(
        "--holdout", type=float, default=0.34, help="share of each combination's videos held out (split=test)"
    )
    s.add_argument(
        "--long",
        type=positive_int,
        metavar="N",
        help="instead: N long videos, each --parts clips of 4-8 s back to back, with moments.csv (which plays when); "
        "126 x 6 parts puts every combination in 6 videos",
    )
    s.add_argument("--parts", type=positive_int, default=6, help="--long: parts per video (default 6)")
    s.add_argument(
        "--clip-dir",
        action="store_true",
        help="instead: a small randomly initialised CLIPModel directory in --out (tokenizer, image processor, "
        "safetensors), to try or benchmark `--from-pretrained` where no real weights are at hand",
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
