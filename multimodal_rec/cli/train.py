"""``mmrec train``: train the three towers on a data directory (also what ``torchrun`` runs, one process per rank)."""

from __future__ import annotations

import argparse
import os

from multimodal_rec.cli.common import Subparsers, add_command, overrides, positive_int, print_json
from multimodal_rec.progress import tqdm_progress


def cmd_train(a: argparse.Namespace) -> None:
    from multimodal_rec.config import load_config
    from multimodal_rec.training.train import train

    cfg = load_config(a.config, overrides(a.set))
    if a.from_pretrained:
        from multimodal_rec.model.pretrained import pretrained_config

        cfg = pretrained_config(cfg, a.from_pretrained)
    if a.epochs is not None:
        cfg.train.epochs = a.epochs
    res = train(cfg, a.data, a.out, resume=a.resume, progress=tqdm_progress(a.quiet))
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports (and writes)
        return
    info = {
        "out": str(res.out_dir),
        "epochs": res.epochs,
        "steps": res.steps,
        "seconds": round(res.seconds, 1),
        "losses": res.final_losses,
    }
    if a.json:
        print_json(info)
    else:
        print(f"trained {res.steps} steps in {res.seconds:.0f}s -> {res.out_dir}  ({info['losses']})")


def add_train(sub: Subparsers) -> None:
    s = add_command(sub, "train", "train the three towers contrastively on a data directory", cmd_train)
    s.add_argument("--config", default="small", help="preset name (mmrec presets) or YAML path (default small)")
    s.add_argument("--data", required=True, help="directory with catalog.csv, captions.csv, interactions.csv")
    s.add_argument("--out", required=True, help="run directory for checkpoints and metrics")
    s.add_argument(
        "--from-pretrained",
        metavar="DIR",
        help="local CLIPModel directory: both trunks from it, heads starting at its joint space (use --config clip)",
    )
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    s.add_argument("--epochs", type=positive_int, default=None, help="override train.epochs")
    s.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value (repeatable)"
    )
