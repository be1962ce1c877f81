"""Training: a short, model-agnostic loop over a task that returns named losses.

``train(...)`` is the entry point (the CLI and the tests call it): frames are decoded once into the cache,
a frozen text trunk's features are computed once, then each step trains text<->video and
user-history -> next-video contrastively on the same video forward pass.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multimodal_rec.config import RunConfig, TrainConfig, refuse_unsupported
from multimodal_rec.data.cache import build_frame_cache, frames_to_tensor
from multimodal_rec.data.tables import Dataset, HistoryExample, history_examples, item_counts, load_dataset
from multimodal_rec.errors import UserError
from multimodal_rec.model.checkpoint import (
    STATE_META,
    has_train_state,
    load_weights,
    read_checkpoint_config,
    same_model,
    save_model,
)
from multimodal_rec.model.multimodal import MultimodalModel, create_model
from multimodal_rec.model.prior import COUNTS_FILE, write_counts
from multimodal_rec.progress import ProgressFn, no_progress
from multimodal_rec.runtime import pick_device, seed_everything
from multimodal_rec.training.distributed import barrier, init_distributed
from multimodal_rec.training.trainer import fit

LOG = logging.getLogger(__name__)
# TrainConfig options of the text-item task that this one has no use for: refused by name, not ignored
UNSUPPORTED_TRAIN_OPTIONS = ("hard_negatives",)


@dataclass
class TrainData:
    """Everything the steps need, in memory: cached frames, captions and history examples."""

    video_ids: list[str]  # training videos that decoded
    frames: np.ndarray  # [N, T, H, W, 3] uint8, memory-mapped
    captions: list[list[str]]  # captions per training video
    examples: list[HistoryExample]  # user-history -> next training video
    counts: dict[str, int]  # training interactions per video id (popularity prior)
    log_pop: np.ndarray  # [N] log(1 + count) of each training video
    trunk_features: np.ndarray | None = None  # [N, T, C] a frozen video trunk's per-frame features, computed once


def prepare_data(cfg: RunConfig, ds: Dataset, cache_dir: Path, progress: ProgressFn = no_progress) -> TrainData:
    vcfg = cfg.model.video
    train_ids = set(ds.split_ids("train"))
    cat = ds.catalog[ds.catalog["video_id"].isin(train_ids)].reset_index(drop=True)
    if cat.empty:
        raise UserError("no training videos: the catalog's split column marks none as 'train'")
    frames, ok = build_frame_cache(
        list(cat["abs_path"]),
        vcfg.num_frames,
        vcfg.image_size,
        cache_dir,
        cfg.train.num_workers,
        progress,
        cfg.train.decode_backend,
    )
    if not ok.any():
        raise UserError("none of the training videos could be decoded")
    caps = ds.captions.groupby("video_id")["caption"].apply(list).to_dict()
    keep = [i for i, vid in enumerate(cat["video_id"]) if ok[i] and caps.get(vid)]
    if not keep:
        raise UserError("no training video has a caption: check captions.csv video ids against the catalog")
    if len(keep) < len(cat):
        LOG.warning("training on %d of %d videos (the rest failed to decode or have no caption)", len(keep), len(cat))
    ids = [cat["video_id"][i] for i in keep]
    frames = frames[keep] if len(keep) < len(cat) else frames
    id_set = set(ids)
    train_ex, _ = history_examples(ds.interactions, cfg.model.user.max_history, cfg.train.min_history)
    examples = [ex for ex in train_ex if ex.target in id_set]
    counts = item_counts(ds.interactions)
    log_pop = np.log1p(np.array([counts.get(v, 0) for v in ids], dtype=np.float32))
    return TrainData(ids, frames, [caps[v] for v in ids], examples, counts, log_pop)


def make_optimizer_groups(model: MultimodalModel, cfg: RunConfig) -> list[dict[str, Any]]:
    """AdamW groups: towers trained from scratch at ``lr``, the unfrozen layers of pretrained trunks (the text
    trunk, an hf video trunk) at ``trunk_lr``."""
    prefixes = ("text.trunk.", "video.cnn.") if cfg.model.video.trunk == "hf" else ("text.trunk.",)
    trunk = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith(prefixes)]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith(prefixes)]
    groups: list[dict[str, Any]] = [{"params": rest, "lr": cfg.train.lr}]
    if trunk:
        groups.append({"params": trunk, "lr": cfg.train.trunk_lr})
    return groups


def augment_clips(
    frames: torch.Tensor, gen: torch.Generator, shift: float = 0.1, zoom: float = 0.15, brightness: float = 0.1
) -> torch.Tensor:
    """Random zoom, shift and brightness per clip, identical across its frames.

    Colour hue, shape and the direction of motion are untouched, so captions stay true; the video tower
    cannot memorise a clip by its exact framing.
    """
    B, T, C, H, W = frames.shape
    x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
    u = torch.rand(B, 4, generator=gen)
    s = 1.0 + zoom * (2 * u[:, 0] - 1)  # <1 zooms in, >1 zooms out
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = s
    theta[:, 0, 2] = shift * 2 * (2 * u[:, 1] - 1)  # affine_grid works in [-1, 1] coordinates
    theta[:, 1, 2] = shift * 2 * (2 * u[:, 2] - 1)
    theta = theta.to(x.device).repeat_interleave(T, 0)  # [B*T, 2, 3]
    grid = torch.nn.functional.affine_grid(theta, [B * T, C, H, W], align_corners=False)
    x = torch.nn.functional.grid_sample(
        x.reshape(B * T, C, H, W), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    gain = (1.0 + brightness * (2 * u[:, 3] - 1)).to(x.device).repeat_interleave(T).view(B * T, 1, 1, 1)
    return (x * gain).clamp_(0.0, 1.0).view(B, T, C, H, W)


class ContrastiveTask:
    """Model + losses for one step: returns a dict of named losses (``loss`` is the weighted sum)."""

    def __init__(self, model: MultimodalModel, cfg: RunConfig, data: TrainData) -> None:
        self.model, self.cfg, self.data = model, cfg, data
        self.index = {v: i for i, v in enumerate(data.video_ids)}
        counts = np.exp(data.log_pop)  # count + 1: a rec target is drawn with frequency ~ its count
        self.log_q = np.log(counts / counts.sum()).astype(np.float32)

    # --- the trainer's Task protocol ------------------------------------------------------------------------
    def batches(self, epoch: int) -> list[tuple[int, int, np.ndarray, list[HistoryExample]]]:
        """One micro-batch per ``batch_size`` videos, each with ``rec_batch_size`` history examples."""
        tc, seed = self.cfg.train, self.cfg.train.seed
        perm = np.random.default_rng(seed * 1000 + epoch).permutation(len(self.data.video_ids))
        rec_order = list(range(len(self.data.examples)))
        random.Random(seed * 1000 + epoch).shuffle(rec_order)
        nr = min(tc.rec_batch_size, len(rec_order))
        out = []
        for s in range(max(1, math.ceil(len(perm) / tc.batch_size))):
            rec = [self.data.examples[rec_order[(s * nr + j) % len(rec_order)]] for j in range(nr)] if nr else []
            out.append((epoch, s, perm[s * tc.batch_size : (s + 1) * tc.batch_size], rec))
        return out

    def step(self, batch: tuple[int, int, np.ndarray, list[HistoryExample]], step: int) -> dict[str, torch.Tensor]:
        epoch, s, vidx, rec = batch
        key = self.cfg.train.seed * 1_000_003 + epoch * 10_007 + s  # per micro-batch: resume replays it exactly
        return self.losses(vidx, rec, random.Random(key), torch.Generator().manual_seed(key))

    def param_groups(self, cfg: TrainConfig) -> list[dict[str, Any]]:
        return make_optimizer_groups(self.model, self.cfg)

    def on_epoch_end(self, epoch: int) -> None:
        recalibrate_batchnorm(self.model, self.data)

    def validate(self) -> dict[str, float]:
        return {}

    def save(self, out: Path, extra: dict[str, Any]) -> None:
        save_model(self.model, self.cfg, out, extra=extra)

    def load_weights(self, out: Path) -> None:
        load_weights(self.model, out)

    # --- the losses -----------------------------------------------------------------------------------------
    def losses(
        self, vidx: np.ndarray, rec: list[HistoryExample], rng: random.Random, gen: torch.Generator
    ) -> dict[str, torch.Tensor]:
        m, tc = self.model, self.cfg.train
        rec_idx = np.array([self.index[ex.target] for ex in rec], dtype=np.int64)
        all_idx = np.concatenate([rec_idx, vidx])  # rec targets first: row i of the rec loss has column i
        clips = self.clips(all_idx, gen)  # [N, T, 3, H, W] uint8 frames, or [N, T, C] frozen-trunk features
        R = len(rec)
        if tc.rec_trains_video or R == 0:
            v = self.encode_clips(clips)  # [N, D]
            tv_from = 0  # every clip has a caption: all of them train text<->video
        else:  # the user tower learns to point into the space text<->video shapes: targets need no gradient
            with torch.no_grad():
                v_rec = self.encode_clips(clips[:R])  # [R, D]
            v = torch.cat([v_rec, self.encode_clips(clips[R:])])  # [N, D]
            tv_from = R
        ids = torch.as_tensor(all_idx, device=v.device)
        caps = [rng.choice(self.data.captions[i]) for i in all_idx[tv_from:]]
        t = m.encode_text(caps)  # [N - tv_from, D]
        out: dict[str, torch.Tensor] = {"loss_tv": m.loss_tv(t, v[tv_from:], ids[tv_from:])}
        loss = tc.w_text_video * out["loss_tv"]
        if rec and tc.w_rec > 0:
            u, _ = m.encode_user([ex.history for ex in rec])  # [B_r, D]
            bias = None
            if m.cfg.popularity_prior:
                bias = m.pop_weight * torch.as_tensor(self.data.log_pop[all_idx], device=v.device)
            if tc.logq_correction:  # in-batch targets were drawn ~ frequency: remove that sampling bias
                logq = -torch.as_tensor(self.log_q[all_idx], device=v.device)
                bias = logq if bias is None else bias + logq
            keys = v if tc.rec_trains_video else v.detach()
            out["loss_rec"] = m.loss_rec(u, keys, ids, key_bias=bias)
            loss = loss + tc.w_rec * out["loss_rec"]
        out["loss"] = loss
        return out

    def clips(self, idx: np.ndarray, gen: torch.Generator) -> torch.Tensor:
        """The training clips ``idx``: their cached frozen-trunk features ``[N, T, C]`` when the run has them,
        else their frames ``[N, T, 3, H, W]`` (augmented when ``train.augment``)."""
        source = self.data.frames if self.data.trunk_features is None else self.data.trunk_features
        order = np.argsort(idx, kind="stable")  # sorted reads are kinder to the memory-mapped cache
        rows = np.empty((len(idx), *source.shape[1:]), dtype=source.dtype)
        rows[order] = source[idx[order]]
        if self.data.trunk_features is not None:
            return torch.from_numpy(rows)
        clips = frames_to_tensor(rows)
        a = self.cfg.train.augment
        return augment_clips(clips, gen, shift=0.1 * a, zoom=0.15 * a, brightness=0.1 * a) if a > 0 else clips

    def encode_clips(self, clips: torch.Tensor) -> torch.Tensor:
        """What :meth:`clips` gave -> video vectors ``[N, D]``."""
        m = self.model
        if self.data.trunk_features is None:
            return m.encode_video(clips)
        return m.video.forward_head(m.video.pool_trunk_features(clips.to(m.device)))


@torch.no_grad()
def cache_trunk_features(
    model: MultimodalModel, frames: np.ndarray, batch_size: int = 32, progress: ProgressFn = no_progress
) -> np.ndarray:
    """A frozen video trunk's per-frame features ``[N, T, C]`` (float32) of every cached clip: one trunk pass per
    clip for the whole run, after which a step costs the temporal pooling and heads only."""
    video = model.video
    was_training = video.training
    video.eval()
    out: np.ndarray | None = None
    bar = progress(total=len(frames), desc="trunk features", unit="clip")
    try:
        for i in range(0, len(frames), batch_size):
            clips = frames_to_tensor(frames[i : i + batch_size]).to(model.device)
            feats = video.trunk_features(clips).float().cpu().numpy()
            if out is None:
                out = np.empty((len(frames), *feats.shape[1:]), np.float32)
            out[i : i + len(feats)] = feats
            bar.update(len(feats))
    finally:
        bar.close()
        video.train(was_training)
    return out if out is not None else np.zeros((0, 0, 0), np.float32)


BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)


@torch.no_grad()
def recalibrate_batchnorm(model: MultimodalModel, data: TrainData, batch_size: int = 64) -> None:
    """Recompute the video trunk's BatchNorm statistics for the current weights ("precise BN").

    Running averages lag behind weights that change quickly, and evaluation-mode outputs then drift far from
    what training saw; one pass over the training clips with a cumulative average fixes that.
    """
    bns = [m for m in model.video.modules() if isinstance(m, BATCH_NORMS)]
    if not bns or model.video.trunk_frozen:  # a frozen trunk keeps its statistics (its features are cached)
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
    was_training = model.video.training
    model.video.train()
    for i in range(0, len(data.video_ids), batch_size):
        model.video.forward_features(frames_to_tensor(data.frames[i : i + batch_size]).to(model.device))
    for m, mom in zip(bns, momenta, strict=True):
        m.momentum = mom
    model.video.train(was_training)


@dataclass
class TrainResult:
    out_dir: Path
    epochs: int
    steps: int
    seconds: float
    final_losses: dict[str, float]


def train(
    cfg: RunConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    resume: bool = False,
    cache_dir: str | Path | None = None,
    progress: ProgressFn = no_progress,
) -> TrainResult:
    """Train ``cfg`` on the tables in ``data_dir``; write checkpoints (safetensors + config) to ``out_dir``."""
    out = Path(out_dir)
    cfg = dataclasses.replace(cfg, zero_shot=False)  # what this run writes is trained
    tc = cfg.train
    refuse_unsupported(tc, UNSUPPORTED_TRAIN_OPTIONS, "the video model (mmrec train)")
    ds = load_dataset(data_dir)
    seed_everything(tc.seed)
    device = pick_device(tc.device)
    if resume:  # the weights, optimizer and position come back in fit(); here only the config is checked
        if not has_train_state(out):
            raise UserError(f"nothing to resume in {out}: no {STATE_META} (train without --resume first)")
        if not same_model(read_checkpoint_config(out).model, cfg.model):
            raise UserError(f"{out} was trained with a different model config; resume with the same config")
    elif has_train_state(out):
        raise UserError(f"{out} already holds a training run: pass --resume to continue it or choose a new --out")
    d = init_distributed(device)  # first: under torchrun on GPUs it picks this rank's GPU
    model = create_model(cfg.model).to(device)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
    # Under torchrun, rank 0 fills the frame cache first; the other ranks then read it (one writer per file).
    barrier(d, not d.main)
    data = prepare_data(cfg, ds, Path(cache_dir) if cache_dir else Path(data_dir) / ".mmrec-cache", progress)
    barrier(d, d.main)
    # Decoding into the cache iterates a DataLoader, which draws from torch's global RNG: reseed, so training
    # (dropout) is the same whether the cache was built by this run or read from an earlier one.
    seed_everything(tc.seed)
    LOG.info("training on %d videos, %d history examples, device %s", len(data.video_ids), len(data.examples), device)
    if d.main:
        write_counts(data.counts, out / COUNTS_FILE)

    # A frozen trunk's features are computed once for every text the run will see.
    if model.text.trunk_frozen:
        texts = sorted({c for cs in data.captions for c in cs} | {t for ex in data.examples for t in ex.history})
        bar = progress(total=len(texts), desc="text features", unit="text")
        for i in range(0, len(texts), 512):
            model.text_features(texts[i : i + 512])
            bar.update(len(texts[i : i + 512]))
        bar.close()

    if model.video.trunk_frozen and tc.augment == 0:
        data.trunk_features = cache_trunk_features(model, data.frames, progress=progress)
        LOG.info("video trunk frozen: %d clips' trunk features computed once", len(data.trunk_features))
    elif model.video.trunk_frozen:
        LOG.info("video trunk frozen but train.augment > 0: each step runs the trunk on augmented frames")

    task = ContrastiveTask(model, cfg, data)
    res = fit(task, tc, out, device=device, resume=resume, progress=progress)
    return TrainResult(out, res.epochs, res.steps, res.seconds, res.final_losses)
