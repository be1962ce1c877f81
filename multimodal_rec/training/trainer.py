"""A short, model-agnostic training loop: the task owns model, data and losses; the loop owns everything else.

``fit(task, cfg, out_dir)`` runs AdamW with a cosine schedule and warm-up, gradient accumulation and
clipping, bf16 autocast on GPU, a checkpoint every N optimizer steps and at each epoch's end (safetensors +
JSON, written atomically), exact resume (weights, optimizer, RNG and the position inside the epoch), early
stopping on a validation metric, a JSON-lines metrics log and PNG curves. Under ``torchrun`` (``WORLD_SIZE`` >
1) it trains data-parallel with ``DistributedDataParallel`` (gloo on CPU, nccl on GPU; see ``distributed.py``):
rank 0's weights are broadcast, rank r takes every W-th micro-batch, gradients are averaged across ranks during
the backward pass of each step's last micro-batch (the others accumulate under ``no_sync``), and only rank 0
writes files.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from multimodal_rec.config import TrainConfig
from multimodal_rec.errors import UserError
from multimodal_rec.model.checkpoint import STATE_META, has_train_state, load_train_state, save_train_state
from multimodal_rec.progress import ProgressFn, no_progress
from multimodal_rec.training.distributed import Dist, barrier, init_distributed, no_sync, wrap_step

LOG = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "curves.png"


class Task(Protocol):
    """What :func:`fit` needs from a task (see ``train.ContrastiveTask`` and ``textrec.NextItemTask``)."""

    model: nn.Module

    def batches(self, epoch: int) -> Sequence[Any]:
        """The epoch's micro-batches, a pure function of (seed, epoch) so a resumed run replays them."""
        ...

    def step(self, batch: Any, step: int) -> dict[str, torch.Tensor]:
        """Named losses of one micro-batch; ``loss`` is the one to minimise."""
        ...

    def param_groups(self, cfg: TrainConfig) -> list[dict[str, Any]]: ...

    def on_epoch_end(self, epoch: int) -> None: ...

    def validate(self) -> dict[str, float]:
        """Validation metrics (may be empty: no early stopping then)."""
        ...

    def save(self, out: Path, extra: dict[str, Any]) -> None:
        """Write the model checkpoint (weights + config) into ``out``."""
        ...

    def load_weights(self, out: Path) -> None: ...


def lr_lambda(warmup: int, total: int):
    """Linear warm-up to 1, then cosine decay to 0 at ``total`` steps."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


# --- curves ------------------------------------------------------------------------------------------------
def plot_curves(metrics_path: Path, out_png: Path) -> bool:
    """Loss curves (and validation metrics, when logged) from the metrics log as one PNG; False without data."""
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if any(k.startswith("val_") for k in r)]
    fig, axes = plt.subplots(1, 2 if val else 1, figsize=(11 if val else 6, 4), squeeze=False)
    ax = axes[0][0]
    for key in sorted({k for r in train for k in r if k.startswith("loss")}):
        pts = [(r["step"], r[key]) for r in train if key in r]
        ax.plot(*zip(*pts, strict=True), label=key)
    ax.set_xlabel("optimizer step")
    ax.set_title("training losses")
    ax.legend()
    if val:
        ax = axes[0][1]
        for key in sorted({k for r in val for k in r if k.startswith("val_")}):
            pts = [(r["epoch"], r[key]) for r in val if key in r]
            ax.plot(*zip(*pts, strict=True), marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_title("validation")
        ax.legend()
    fig.tight_layout()
    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(out_png)
    return True


# --- the loop ---------------------------------------------------------------------------------------------
@dataclass
class FitResult:
    out_dir: Path
    epochs: int  # epochs completed
    steps: int  # optimizer steps taken
    seconds: float
    final_losses: dict[str, float]
    stopped_early: bool = False
    best: dict[str, float] | None = None  # validation metrics of the kept weights (early stopping)


def fit(
    task: Task,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    device: torch.device,
    resume: bool = False,
    progress: ProgressFn = no_progress,
) -> FitResult:
    """Train ``task`` for ``cfg.epochs`` (or ``cfg.max_steps``) and write checkpoints into ``out_dir``."""
    out = Path(out_dir)
    if cfg.early_stop_metric and not task.validate():
        raise UserError(f"early_stop_metric is {cfg.early_stop_metric!r} but this task has no validation metrics")
    if cfg.early_stop_patience != TrainConfig().early_stop_patience and not cfg.early_stop_metric:
        raise UserError("train.early_stop_patience needs train.early_stop_metric (without one it would be ignored)")
    t0 = time.time()
    run = _Run(task, cfg, out, device, init_distributed(device))
    if resume:
        run.resume()
    elif has_train_state(out):
        raise UserError(f"{out} already holds a training run: pass --resume to continue it or choose a new --out")
    run.start()
    while run.epoch < cfg.epochs and not run.reached_max_steps():
        if not run.train_epoch(progress):  # max_steps reached inside the epoch
            break
        if run.end_epoch():  # early stopping
            break
    run.finish()
    best = run.best["metrics"]
    return FitResult(out, run.epoch, run.step, time.time() - t0, run.last, run.stopped_early, best)


class _Run:
    """The state of one :func:`fit`: optimizer, schedule, the (DDP-wrapped) step and the position in the run."""

    def __init__(self, task: Task, cfg: TrainConfig, out: Path, device: torch.device, d: Dist) -> None:
        self.task, self.cfg, self.out, self.device, self.d = task, cfg, out, device, d
        self.accum = max(1, cfg.grad_accum)
        self.n_micro = len(task.batches(0)) // d.world  # micro-batches per rank and epoch
        if self.n_micro == 0:
            raise UserError("nothing to train on: the task has fewer micro-batches than processes")
        self.steps_per_epoch = math.ceil(self.n_micro / self.accum)
        total = self.steps_per_epoch * cfg.epochs  # the schedule spans every epoch even when max_steps stops early
        self.opt = torch.optim.AdamW(task.param_groups(cfg), weight_decay=cfg.weight_decay)
        self.lr_at = lr_lambda(cfg.warmup_steps, total)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self.lr_at)
        self.params = [p for g in self.opt.param_groups for p in g["params"]]
        self.module: nn.Module = nn.Identity()  # the step module, made in start()
        self.epoch, self.micro, self.step = 0, 0, 0
        self.best: dict[str, Any] = {"value": None, "bad": 0, "metrics": None}
        self.last: dict[str, float] = {}
        self.stopped_early = False

    def resume(self) -> None:
        """Weights, optimizer, RNG and position from the run directory."""
        if not has_train_state(self.out):
            raise UserError(f"nothing to resume in {self.out}: no {STATE_META} (train without --resume first)")
        self.task.load_weights(self.out)
        meta = load_train_state(self.out, self.opt)
        self.epoch, self.micro, self.step = int(meta["epoch"]), int(meta.get("micro", 0)), int(meta["step"])
        self.best = meta.get("best", self.best)
        self.sched.last_epoch = self.step  # continue the schedule where it stopped
        for group, base in zip(self.opt.param_groups, self.sched.base_lrs, strict=True):
            group["lr"] = base * self.lr_at(self.step)
        LOG.info("resumed %s at epoch %d, micro-batch %d (step %d)", self.out, self.epoch, self.micro, self.step)

    def start(self) -> None:
        if self.d.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.module = wrap_step(self.task.model, self.task.step, self.d)  # DDP: rank 0's weights broadcast

    def reached_max_steps(self) -> bool:
        return self.cfg.max_steps > 0 and self.step >= self.cfg.max_steps

    def train_epoch(self, progress: ProgressFn) -> bool:
        """Optimizer steps from the current position to the epoch's end; False when max_steps stopped it."""
        cfg, d = self.cfg, self.d
        batches = list(self.task.batches(self.epoch))[d.rank :: d.world][: self.n_micro]  # every W-th, same count
        self.task.model.train()
        bar = progress(total=self.steps_per_epoch, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit="step")
        bar.update(self.micro // self.accum)
        self.opt.zero_grad(set_to_none=True)
        while self.micro < self.n_micro:
            group = batches[self.micro : self.micro + self.accum]
            self.last = self.optimizer_step(group)
            self.micro += len(group)
            self.step += 1
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in self.last.items()})
            if self.step % cfg.log_every == 0 or self.micro >= self.n_micro:
                self.log({"epoch": self.epoch + 1, "step": self.step, "lr": self.sched.get_last_lr()[0], **self.last})
            if self.reached_max_steps():
                break
            if self.micro < self.n_micro and cfg.checkpoint_every > 0 and self.step % cfg.checkpoint_every == 0:
                self.checkpoint()
        bar.close()
        if self.micro < self.n_micro:  # max_steps reached inside the epoch: a resumable mid-epoch checkpoint
            self.checkpoint()
            return False
        return True

    def optimizer_step(self, group: Sequence[Any]) -> dict[str, float]:
        """Forward/backward over the micro-batches of one step (gradients all-reduced after the last), clip, step;
        the group's mean of each named loss."""
        sums: dict[str, float] = {}
        use_amp = self.device.type == "cuda"
        for i, b in enumerate(group):
            with no_sync(self.module, sync=i == len(group) - 1):
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
                    losses = self.module(b, self.step)
                (losses["loss"] / len(group)).backward()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / len(group)
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return sums

    def end_epoch(self) -> bool:
        """The task's epoch-end hook, validation and the epoch's checkpoint; True when early stopping says stop."""
        cfg = self.cfg
        self.task.on_epoch_end(self.epoch)
        self.epoch, self.micro = self.epoch + 1, 0
        val = self.task.validate() if cfg.early_stop_metric else {}
        if val:
            self.track_best(val)
        self.checkpoint()
        LOG.info("epoch %d/%d done: %s", self.epoch, cfg.epochs, {k: round(v, 4) for k, v in self.last.items()})
        if val and self.best["bad"] >= cfg.early_stop_patience:
            LOG.info("early stop: %s did not improve for %d epochs", cfg.early_stop_metric, self.best["bad"])
            self.stopped_early = True
        return self.stopped_early

    def track_best(self, val: dict[str, float]) -> None:
        """Log the validation metrics; keep the weights (``best/``) when the early-stop metric improved."""
        name = self.cfg.early_stop_metric
        if name not in val:
            raise UserError(f"early_stop_metric {name!r} is not one of {sorted(val)}")
        self.log({"epoch": self.epoch, "step": self.step, **{f"val_{k}": v for k, v in val.items()}})
        if self.best["value"] is None or val[name] > self.best["value"]:
            self.best = {"value": val[name], "bad": 0, "metrics": val}
            if self.d.main:
                self.task.save(self.out / "best", {"epoch": self.epoch, "step": self.step})
        else:
            self.best["bad"] += 1

    def checkpoint(self) -> None:
        """Model (the task's writer) and training state at the current position; rank 0 only."""
        if self.d.main:
            pos = {"epoch": self.epoch, "micro": self.micro, "step": self.step}
            self.task.save(self.out, pos)
            save_train_state(self.out, self.opt, {**pos, "best": self.best})

    def log(self, line: dict[str, Any]) -> None:
        if self.d.main:
            with (self.out / METRICS_FILE).open("a") as fh:
                fh.write(json.dumps(line) + "\n")

    def finish(self) -> None:
        """Keep the best epoch's weights (early stopping), plot the curves, wait for every rank."""
        if self.best["value"] is not None and self.d.main:
            self.task.load_weights(self.out / "best")
            self.task.save(self.out, {"epoch": self.epoch, "step": self.step, "best": self.best["metrics"]})
        log_path = self.out / METRICS_FILE
        if self.d.main and log_path.is_file():
            try:
                plot_curves(log_path, self.out / PLOT_FILE)
            except ImportError:
                LOG.warning("matplotlib is not installed: no %s", PLOT_FILE)
        barrier(self.d)
