"""Data parallelism for the trainer: the process group under ``torchrun`` and the task's step wrapped in
``DistributedDataParallel``.

DDP needs one module whose ``forward`` runs the whole step, so :class:`TaskStep` is that module: it holds
the task's model (its parameters) and dispatches ``forward(batch, step)`` to ``task.step``. DDP then
broadcasts rank 0's weights and buffers when it wraps the module, and all-reduces (averages) the gradients
bucket by bucket while the backward pass is still running (compute/communication overlap).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

LOG = logging.getLogger(__name__)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the ``torchrun`` process group when there is one (``WORLD_SIZE`` > 1); else a single process.

    gloo on the CPU, nccl on GPUs (each rank then uses GPU ``LOCAL_RANK``: call this before moving a model
    to ``cuda``).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    LOG.info("data-parallel rank %d of %d (%s)", dist.get_rank(), world, dist.get_backend())
    return Dist(dist.get_rank(), world, local_rank)


def barrier(d: Dist, when: bool = True) -> None:
    """Wait for every rank (a no-op in a single process or when ``when`` is false)."""
    if d.world > 1 and when:
        import torch.distributed as dist

        dist.barrier()


class TaskStep(nn.Module):
    """A task's step as a module: ``forward(batch, step)`` -> the task's named losses."""

    def __init__(self, model: nn.Module, step: Callable[[Any, int], dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.model = model  # registers the parameters DDP synchronises
        self.task_step = step

    def forward(self, batch: Any, step: int) -> dict[str, torch.Tensor]:
        return self.task_step(batch, step)


def wrap_step(model: nn.Module, step: Callable[[Any, int], dict[str, torch.Tensor]], d: Dist) -> nn.Module:
    """The step module, in ``DistributedDataParallel`` when there are several ranks (rank 0's weights and
    buffers are broadcast here).

    ``find_unused_parameters``: a step may leave trainable parameters out of its graph (a loss whose weight
    is 0, the popularity weight with the prior off, an attention scorer a config switches off); DDP then
    still finishes its all-reduce. Frozen parameters (``requires_grad=False``) are not synchronised at all.
    """
    module = TaskStep(model, step)
    if d.world <= 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=None, find_unused_parameters=True)


def no_sync(module: nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
    """Inside it, backward accumulates gradients locally (not the last micro-batch of an optimizer step)."""
    from torch.nn.parallel import DistributedDataParallel

    if sync or not isinstance(module, DistributedDataParallel):
        return contextlib.nullcontext()
    return module.no_sync()
