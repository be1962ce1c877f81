"""Run by tests/test_trainer.py under ``torchrun --nproc_per_node=2``: a few data-parallel steps on a tiny
text-item task, then each rank writes the weights it holds (``rank{r}.safetensors``) for comparison."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))

from test_trainer import tiny_cfg, tiny_problem, tiny_train

from multimodal_rec.evaluation.ml100k.textrec import NextItemTask, TextItemRecModel
from multimodal_rec.training.trainer import fit


def main() -> None:
    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    torch.manual_seed(rank)  # different initial weights per rank: the trainer must broadcast rank 0's
    seqs, feats = tiny_problem()
    model = TextItemRecModel(tiny_cfg(), feats, np.ones(len(feats), bool), np.ones(len(feats)))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / f"init{rank}.safetensors"))
    tc = tiny_train(epochs=2, batch_size=4)
    fit(NextItemTask(model, seqs, tc), tc, out / "run", device=torch.device("cpu"))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / f"rank{rank}.safetensors"))


if __name__ == "__main__":
    main()
