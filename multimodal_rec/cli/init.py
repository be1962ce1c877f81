"""``mmrec init``: a run directory from a pretrained image-text model, with no training (zero-shot)."""

from __future__ import annotations

import argparse

from multimodal_rec.cli.common import Subparsers, add_command, print_json


def cmd_init(a: argparse.Namespace) -> None:
    from multimodal_rec.model.pretrained import init_zero_shot

    cfg = init_zero_shot(a.from_pretrained, a.out, a.config)
    info = {
        "out": a.out,
        "from_pretrained": cfg.model.video.pretrained_path,
        "embed_dim": cfg.model.embed_dim,
        "image_size": cfg.model.video.image_size,
        "num_frames": cfg.model.video.num_frames,
        "zero_shot": True,
    }
    if a.json:
        print_json(info)
        return
    print(
        f"zero-shot run {a.out} from {info['from_pretrained']} ({info['embed_dim']}-d joint space, "
        f"{info['num_frames']} frames of {info['image_size']} px, mean over time): encode a catalog with "
        f"`mmrec encode --model {a.out} ...`; recommending needs `mmrec train --from-pretrained` on interactions"
    )


def add_init(sub: Subparsers) -> None:
    s = add_command(
        sub, "init", "make a run directory from a pretrained image-text model (zero-shot, no training)", cmd_init
    )
    s.add_argument(
        "--from-pretrained",
        required=True,
        metavar="DIR",
        help="local Hugging Face CLIPModel directory (config.json, weights, tokenizer, preprocessor_config.json)",
    )
    s.add_argument("--out", required=True, help="run directory to write (what mmrec encode --model reads)")
    s.add_argument("--config", default="clip", help="preset or YAML the rest of the settings come from (default clip)")
