"""A short, model-agnostic training loop: the task owns model, data and losses; the loop owns everything else.

``fit(task, cfg, out_dir)`` runs AdamW with a cosine schedule and warm-up, gradient accumulation and
clipping, bf16 autocast on GPU, a checkpoint every N optimizer steps and at each epoch's end (safetensors +
JSON, written atomically), exact resume (weights, optimizer, RNG and the position inside the epoch), early
stopping on a validation metric, a JSON-lines metrics log and PNG curves. Under ``torchrun`` (``WORLD_SIZE`` >
1) it trains data-parallel: rank r takes every W-th micro-batch, gradients are averaged across ranks with an
all-reduce before each step (gloo on CPU, nccl on GPU), and only rank 0 writes files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from multimodal_rec.config import TrainConfig
from multimodal_rec.errors import UserError
from multimodal_rec.progress import ProgressFn, no_progress

LOG = logging.getLogger(__name__)
STATE_FILE = "train_state.safetensors"
STATE_META = "train_state.json"
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


# --- distributed ------------------------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the ``torchrun`` process group when there is one (``WORLD_SIZE`` > 1); else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    LOG.info("data-parallel rank %d of %d (%s)", dist.get_rank(), world, dist.get_backend())
    return Dist(dist.get_rank(), world)


def _sync_initial_weights(model: nn.Module, d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


def _average_gradients(params: list[nn.Parameter], d: Dist) -> None:
    """All-reduce the gradients as one flat buffer (what DDP's buckets do, without overlap)."""
    if d.world <= 1:
        return
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= d.world
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


# --- checkpoints ------------------------------------------------------------------------------------------
def save_state(out: Path, opt: torch.optim.Optimizer, meta: dict[str, Any]) -> None:
    """Optimizer state + RNG (safetensors) and position/metadata (JSON), each written atomically."""
    from safetensors.torch import save_file

    sd = opt.state_dict()
    tensors = {f"{i}/{k}": v.detach().cpu().contiguous() for i, s in sd["state"].items() for k, v in s.items()}
    tensors["rng/torch"] = torch.get_rng_state()
    tmp = out / f".{STATE_FILE}.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(out / STATE_FILE)
    tmp_meta = out / f".{STATE_META}.tmp"
    tmp_meta.write_text(json.dumps({**meta, "param_groups": sd["param_groups"]}))
    tmp_meta.replace(out / STATE_META)


def load_state(out: Path, opt: torch.optim.Optimizer) -> dict[str, Any]:
    from safetensors.torch import load_file

    meta = json.loads((out / STATE_META).read_text())
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in load_file(str(out / STATE_FILE)).items():
        if key == "rng/torch":
            torch.set_rng_state(v)
            continue
        i, name = key.split("/", 1)
        state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    return meta


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
    d = init_distributed(device)
    model = task.model
    accum = max(1, cfg.grad_accum)
    n_micro = len(task.batches(0)) // d.world
    if n_micro == 0:
        raise UserError("nothing to train on: the task has fewer micro-batches than processes")
    steps_per_epoch = math.ceil(n_micro / accum)
    total = steps_per_epoch * cfg.epochs  # the schedule spans every epoch even when max_steps stops it early
    opt = torch.optim.AdamW(task.param_groups(cfg), weight_decay=cfg.weight_decay)
    f = lr_lambda(cfg.warmup_steps, total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, f)
    params = [p for g in opt.param_groups for p in g["params"]]
    epoch, micro, step = 0, 0, 0
    best: dict[str, Any] = {"value": None, "bad": 0, "metrics": None}
    if resume:
        if not (out / STATE_META).is_file():
            raise UserError(f"nothing to resume in {out}: no {STATE_META} (train without --resume first)")
        task.load_weights(out)
        meta = load_state(out, opt)
        epoch, micro, step = int(meta["epoch"]), int(meta.get("micro", 0)), int(meta["step"])
        best = meta.get("best", best)
        sched.last_epoch = step  # continue the schedule where it stopped
        for group, base in zip(opt.param_groups, sched.base_lrs, strict=True):
            group["lr"] = base * f(step)
        LOG.info("resumed %s at epoch %d, micro-batch %d (step %d)", out, epoch, micro, step)
    elif (out / STATE_META).exists():
        raise UserError(f"{out} already holds a training run: pass --resume to continue it or choose a new --out")
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
    _sync_initial_weights(model, d)

    use_amp = device.type == "cuda"
    log_path = out / METRICS_FILE
    t0 = time.time()
    last: dict[str, float] = {}
    stopped_early = False

    def log(line: dict[str, Any]) -> None:
        if d.main:
            with log_path.open("a") as fh:
                fh.write(json.dumps(line) + "\n")

    def checkpoint(at_epoch: int, at_micro: int) -> None:
        if d.main:
            pos = {"epoch": at_epoch, "micro": at_micro, "step": step}
            task.save(out, pos)
            save_state(out, opt, {**pos, "best": best})

    while epoch < cfg.epochs and not (cfg.max_steps > 0 and step >= cfg.max_steps):
        batches = list(task.batches(epoch))[d.rank :: d.world][:n_micro]
        model.train()
        bar = progress(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step")
        bar.update(micro // accum)
        opt.zero_grad(set_to_none=True)
        while micro < n_micro:
            group = batches[micro : micro + accum]
            sums: dict[str, float] = {}
            for b in group:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    losses = task.step(b, step)
                (losses["loss"] / len(group)).backward()
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) / len(group)
            _average_gradients(params, d)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            micro += len(group)
            step += 1
            last = sums
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in last.items()})
            if step % cfg.log_every == 0 or micro >= n_micro:
                log({"epoch": epoch + 1, "step": step, "lr": sched.get_last_lr()[0], **last})
            done = cfg.max_steps > 0 and step >= cfg.max_steps
            if micro < n_micro and not done and cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0:
                checkpoint(epoch, micro)
            if done:
                break
        bar.close()
        if micro < n_micro:  # max_steps reached inside the epoch: a resumable mid-epoch checkpoint
            checkpoint(epoch, micro)
            break
        task.on_epoch_end(epoch)
        epoch, micro = epoch + 1, 0
        val = task.validate() if cfg.early_stop_metric else {}
        if val:
            if cfg.early_stop_metric not in val:
                raise UserError(f"early_stop_metric {cfg.early_stop_metric!r} is not one of {sorted(val)}")
            log({"epoch": epoch, "step": step, **{f"val_{k}": v for k, v in val.items()}})
            value = val[cfg.early_stop_metric]
            if best["value"] is None or value > best["value"]:
                best = {"value": value, "bad": 0, "metrics": val}
                if d.main:
                    task.save(out / "best", {"epoch": epoch, "step": step})
            else:
                best["bad"] += 1
        checkpoint(epoch, 0)
        LOG.info("epoch %d/%d done: %s", epoch, cfg.epochs, {k: round(v, 4) for k, v in last.items()})
        if val and best["bad"] >= cfg.early_stop_patience:
            LOG.info("early stop: %s did not improve for %d epochs", cfg.early_stop_metric, best["bad"])
            stopped_early = True
            break
    if best["value"] is not None and d.main:  # keep the best epoch's weights as the run's model
        task.load_weights(out / "best")
        task.save(out, {"epoch": epoch, "step": step, "best": best["metrics"]})
    if d.main and log_path.is_file():
        try:
            plot_curves(log_path, out / PLOT_FILE)
        except ImportError:
            LOG.warning("matplotlib is not installed: no %s", PLOT_FILE)
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()
    return FitResult(out, epoch, step, time.time() - t0, last, stopped_early, best["metrics"])
