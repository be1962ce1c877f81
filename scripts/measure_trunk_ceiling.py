"""The trunk ceiling of a text model on a synthetic world, without training or a bundle (issue 16).

Usage: python scripts/measure_trunk_ceiling.py --data world [--model-path DIR] [--json]
The same figures ``mmrec eval`` prints beside the system's (``evaluation/trunk_ceiling.py``), computed with an untouched
text trunk: the packaged all-MiniLM-L6-v2 by default (what the ``small`` preset freezes, so on the demo world this is
the figure the demo's ``mmrec eval`` prints, whatever the training), or any local Hugging Face text model directory.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import numpy as np
import torch

from encoders import TextTower, TextTowerConfig
from encoders.text import load_tokenizer
from multimodal_rec.data.synth import paraphrase_queries, vocab_queries
from multimodal_rec.data.tables import load_dataset
from multimodal_rec.evaluation.trunk_ceiling import format_ceiling, trunk_ceiling
from multimodal_rec.model.text_features import frozen_trunk_features


class FrozenTrunk:
    """What trunk_ceiling reads of a model: ``text`` (the tower) and ``text_features(texts)``, the trunk untouched."""

    def __init__(self, cfg: TextTowerConfig) -> None:
        self.text, self.tokenizer = TextTower(cfg, 8), load_tokenizer(cfg)

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        return frozen_trunk_features(self.text, self.tokenizer, texts, 256, torch.device("cpu"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a synthetic world (mmrec synth --out DIR)")
    p.add_argument("--model-path", default=None, help="a local Hugging Face text model (default: packaged MiniLM)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    ds = load_dataset(a.data)
    cfg = TextTowerConfig() if a.model_path is None else TextTowerConfig(model_path=a.model_path)
    catalog = ds.catalog.reset_index(drop=True)
    test_ids = set(ds.split_ids("test"))
    held_out = np.flatnonzero(catalog["video_id"].isin(test_ids).to_numpy())
    scopes = {"": held_out, "_whole_catalog": np.arange(len(catalog))}
    sets = {"vocabulary": vocab_queries(), "paraphrase": paraphrase_queries()}
    t0 = time.perf_counter()
    res = trunk_ceiling(FrozenTrunk(cfg), catalog, ds.captions, scopes, sets, vocab_queries())
    res["seconds"] = round(time.perf_counter() - t0, 1)
    if a.json:
        print(json.dumps(res))
        return
    print(f"{len(catalog)} videos, {len(held_out)} held out, {res['captions']} captions, {res['seconds']} s")
    print("\n".join(format_ceiling(res)))


if __name__ == "__main__":
    main()
