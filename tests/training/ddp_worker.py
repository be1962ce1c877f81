"""Run by tests/training/test_trainer.py under ``torchrun --nproc_per_node=2``: data-parallel training of a tiny
text-item task, with and without gradient accumulation; each rank writes its initial weights (``init{r}``) and the
weights it ends with (``rank{r}``, ``rank{r}_accum``) for comparison with one process training on twice the batch."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))

from test_trainer import DDP_RUNS, ddp_model, ddp_train, tiny_problem

from multimodal_rec.evaluation.ml100k.textrec import NextItemTask
from multimodal_rec.training.trainer import fit


def save(model: torch.nn.Module, path: Path) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def main() -> None:
    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    seqs, feats = tiny_problem()
    for tag, accum in DDP_RUNS:
        torch.manual_seed(rank)  # different initial weights per rank: training must start from rank 0's
        model = ddp_model(feats)
        if not tag:
            save(model, out / f"init{rank}.safetensors")
        tc = ddp_train(grad_accum=accum)
        fit(NextItemTask(model, seqs, tc), tc, out / f"run{tag}", device=torch.device("cpu"))
        save(model, out / f"rank{rank}{tag}.safetensors")


if __name__ == "__main__":
    main()
