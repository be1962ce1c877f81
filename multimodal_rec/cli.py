"""``mmrec``: thin command line over the library. Parse, call a typed function, print (``--json`` for machines)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from multimodal_rec.errors import UserError
from multimodal_rec.progress import tqdm_progress

LOG = logging.getLogger("mmrec")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, default=_json_default, ensure_ascii=False))


def _print_hits(title: str, hits: Sequence[Any], cols: Sequence[str] = ("title",)) -> None:
    print(title)
    for h in hits:
        meta = "  ".join(str(h.metadata.get(c, "")) for c in cols if c in h.metadata)
        print(f"  {h.rank:>3}. {h.video_id:<10} {h.score:+.3f}  {meta}")


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


# --- commands ------------------------------------------------------------------------------------------------
def cmd_synth(a: argparse.Namespace) -> None:
    from multimodal_rec.synth import make_world

    bar = None
    if not a.quiet:
        from tqdm import tqdm

        bar = tqdm(total=a.videos, desc="write videos", unit="video", file=sys.stderr, dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.n = done
            bar.refresh()

    try:
        s = make_world(a.out, videos=a.videos, users=a.users, seed=a.seed, holdout=a.holdout, progress=progress)
    except ValueError as e:
        raise UserError(str(e)) from None
    finally:
        if bar is not None:
            bar.close()
    info = {
        "out": str(s.out),
        "videos": s.videos,
        "users": s.users,
        "interactions": s.interactions,
        "captions": s.captions,
    }
    if a.json:
        _print_json(info)
    else:
        print(f"wrote {s.videos} videos, {s.captions} captions, {s.users} users / {s.interactions} events to {s.out}")


def _overrides(pairs: Sequence[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise UserError(f"--set expects KEY=VALUE (e.g. train.epochs=3), got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def cmd_train(a: argparse.Namespace) -> None:
    from multimodal_rec.config import load_config
    from multimodal_rec.train import train

    cfg = load_config(a.config, _overrides(a.set))
    if a.epochs is not None:
        cfg.train.epochs = a.epochs
    res = train(cfg, a.data, a.out, resume=a.resume, progress=tqdm_progress(a.quiet))
    info = {
        "out": str(res.out_dir),
        "epochs": res.epochs,
        "steps": res.steps,
        "seconds": round(res.seconds, 1),
        "losses": res.final_losses,
    }
    if a.json:
        _print_json(info)
    else:
        print(f"trained {res.steps} steps in {res.seconds:.0f}s -> {res.out_dir}  ({info['losses']})")


def cmd_encode(a: argparse.Namespace) -> None:
    from multimodal_rec.encode import default_workers, encode_catalog

    workers = a.workers if a.workers is not None else default_workers(a.device)
    res = encode_catalog(
        a.model,
        a.catalog,
        a.out,
        batch_size=a.batch_size,
        workers=workers,
        device=a.device,
        shard_size=a.shard_size,
        rebuild=a.rebuild,
        backend=a.backend,
        index_factory=a.index,
        progress=tqdm_progress(a.quiet),
        engine=a.engine,
        ray_address=a.ray_address,
        ray_cpus=a.ray_cpus,
        index_shards=a.index_shards,
    )
    info = {
        "bundle": str(res.bundle),
        "videos": res.total,
        "encoded": res.encoded,
        "reused": res.reused,
        "resumed": res.resumed,
        "removed": res.removed,
        "skipped": len(res.skipped),
        "seconds": round(res.seconds, 1),
    }
    if a.json:
        _print_json(info)
        return
    print(
        f"bundle {res.bundle}: {res.total} videos ({res.encoded} encoded, {res.reused} unchanged kept, "
        f"{res.resumed} from an interrupted run), {res.removed} removed, {len(res.skipped)} skipped "
        f"in {res.seconds:.0f}s"
    )
    for s in res.skipped[:10]:
        print(f"  skipped {s['video_id']}: {s['reason']}")
    if len(res.skipped) > 10:
        print(f"  ... and {len(res.skipped) - 10} more: see {res.bundle / 'skipped.csv'}")


def cmd_export(a: argparse.Namespace) -> None:
    from multimodal_rec.export import export_bundle

    res = export_bundle(a.bundle, a.to, out=a.out, url=a.url, collection=a.collection)
    info = {"to": res.target, "where": res.where, "collection": res.collection, "count": res.count, "dim": res.dim}
    if a.json:
        _print_json(info)
    else:
        print(f"exported {res.count} vectors (dim {res.dim}) to {res.target} {res.where}, collection {res.collection}")


def _load(bundle: str):
    from multimodal_rec.recommender import Recommender

    return Recommender.load(bundle)


def cmd_search(a: argparse.Namespace) -> None:
    rec = _load(a.bundle)
    results = rec.search_batch(a.query, k=a.k)
    if a.json:
        if len(a.query) == 1:
            _print_json({"hits": [h.to_dict() for h in results[0]]})
        else:
            _print_json(
                {
                    "results": [
                        {"query": q, "hits": [h.to_dict() for h in hs]} for q, hs in zip(a.query, results, strict=True)
                    ]
                }
            )
        return
    for q, hits in zip(a.query, results, strict=True):
        _print_hits(f"search: {q!r}", hits)


def cmd_recommend(a: argparse.Namespace) -> None:
    rec = _load(a.bundle)
    hits = rec.recommend(a.history, k=a.k, exclude=a.exclude or ())
    why = rec.explain(a.history)
    if a.json:
        _print_json({"hits": [h.to_dict() for h in hits], "attention": [{"text": t, "weight": w} for t, w in why]})
        return
    _print_hits(f"recommend for a history of {len(a.history)} items:", hits)
    top = max(why, key=lambda x: x[1])
    print(f"  because of: {top[0]!r} (attention {top[1]:.2f})")


def cmd_eval(a: argparse.Namespace) -> None:
    from multimodal_rec.evaluate import evaluate, format_report

    res = evaluate(_load(a.bundle), a.data)
    if a.json:
        _print_json(res)
    else:
        print(format_report(res))


def cmd_serve(a: argparse.Namespace) -> None:
    from multimodal_rec.serve import run_server

    run_server(a.bundle, host=a.host, port=a.port, workers=a.workers)


def cmd_bench(a: argparse.Namespace) -> None:
    from multimodal_rec import bench

    if a.what == "encode":
        if not a.model or not a.catalog:
            raise UserError("bench encode needs --model RUN and --catalog CATALOG")
        res = bench.bench_encode(
            a.model,
            a.catalog,
            batch_size=a.batch_size,
            workers=a.workers,
            memory=not a.no_memory,
            device=a.device,
            repeat=a.repeat,
        )
        print(json.dumps(res) if a.json else bench.format_encode(res))


def cmd_presets(a: argparse.Namespace) -> None:
    from multimodal_rec.config import CONFIG_DIR, list_presets

    names = list_presets()
    if a.json:
        _print_json({"presets": names, "dir": str(CONFIG_DIR)})
    else:
        for n in names:
            print(f"{n}\t{CONFIG_DIR / (n + '.yaml')}")


# --- parser --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmrec", description="Text-to-video retrieval and recommendation engine.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, fn: Any) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        sp.add_argument("--json", action="store_true", help="print one JSON object (machine-readable)")
        sp.add_argument("--quiet", "-q", action="store_true", help="no progress bars, warnings only")
        return sp

    s = add("synth", "make the synthetic demo world (videos, catalog, captions, interactions)", cmd_synth)
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--videos", type=_positive_int, default=756, help="number of clips (default 756: 6 per combination)")
    s.add_argument("--users", type=int, default=300, help="number of users (default 300)")
    s.add_argument("--seed", type=int, default=0, help="random seed: same seed, same files")
    s.add_argument(
        "--holdout", type=float, default=0.34, help="share of each combination's videos held out (split=test)"
    )

    s = add("train", "train the three towers contrastively on a data directory", cmd_train)
    s.add_argument("--config", default="small", help="preset name (mmrec presets) or YAML path (default small)")
    s.add_argument("--data", required=True, help="directory with catalog.csv, captions.csv, interactions.csv")
    s.add_argument("--out", required=True, help="run directory for checkpoints and metrics")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    s.add_argument("--epochs", type=_positive_int, default=None, help="override train.epochs")
    s.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value (repeatable)"
    )

    s = add("encode", "encode a video catalog into a bundle (model + embeddings + FAISS index)", cmd_encode)
    s.add_argument("--model", required=True, help="trained run directory (mmrec train --out)")
    s.add_argument("--catalog", required=True, help="catalog CSV/Parquet with video_id,path (paths relative to it)")
    s.add_argument("--out", required=True, help="bundle directory to write (replaced atomically)")
    s.add_argument("--batch-size", type=_positive_int, default=32, help="clips per model batch")
    s.add_argument(
        "--workers",
        type=int,
        default=None,
        help="decoding worker processes (default: cores on a GPU, cores/2 on a CPU)",
    )
    s.add_argument("--device", default="auto", help="auto, cpu or cuda")
    s.add_argument(
        "--shard-size", type=_positive_int, default=None, help="clips per resumable shard (default 8 batches)"
    )
    s.add_argument(
        "--backend",
        choices=["auto", "decord", "pyav"],
        default="auto",
        help="video decoder: auto = decord, PyAV for clips decord cannot read",
    )
    s.add_argument(
        "--index",
        default=None,
        metavar="FACTORY",
        help="FAISS index: auto (by catalog size: Flat, HNSW, IVF-PQ) or a factory string (default: config)",
    )
    s.add_argument("--rebuild", action="store_true", help="re-encode everything instead of updating an existing bundle")
    s.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process + decode workers; ray: a Ray Data job (needs pip install -e '.[distributed]')",
    )
    s.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to run on (default: $RAY_ADDRESS, else a local Ray started for the job)",
    )
    s.add_argument("--ray-cpus", type=_positive_int, default=None, help="CPUs of a local Ray (default: all cores)")
    s.add_argument(
        "--index-shards",
        type=_positive_int,
        default=1,
        help="split the index into N shards by a hash of the video id (search merges them)",
    )

    s = add("export", "export a bundle's vectors + metadata to a vector database (needs '.[export]')", cmd_export)
    s.add_argument("--to", choices=["qdrant"], required=True, help="target database")
    s.add_argument("--bundle", required=True)
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="local database directory (Qdrant embedded mode, no server)")
    where.add_argument("--url", help="database server URL, e.g. http://localhost:6333")
    s.add_argument("--collection", default="videos", help="collection name (replaced if it exists)")

    s = add("search", "text -> videos", cmd_search)
    s.add_argument("--bundle", required=True)
    s.add_argument("query", nargs="+", help="one or more text queries")
    s.add_argument("-k", type=int, default=10, help="hits per query (1..1000)")

    s = add("recommend", "user history -> videos", cmd_recommend)
    s.add_argument("--bundle", required=True)
    s.add_argument("--history", nargs="+", required=True, help="texts the user engaged with, oldest first")
    s.add_argument("--exclude", nargs="*", help="video ids not to recommend")
    s.add_argument("-k", type=int, default=10, help="hits (1..1000)")

    s = add("eval", "full-ranking evaluation of a bundle on a data directory", cmd_eval)
    s.add_argument("--bundle", required=True)
    s.add_argument("--data", required=True, help="data directory (held-out split + last events)")

    s = add("serve", "HTTP service over a bundle (needs the serve extra: pip install -e '.[serve]')", cmd_serve)
    s.add_argument("--bundle", required=True)
    s.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=_positive_int, default=1, help="uvicorn worker processes")

    s = add("bench", "benchmarks: measured throughput ratios (not tests)", cmd_bench)
    s.add_argument("what", choices=["encode"], help="encode: decode-only vs model-only vs end-to-end, and memory")
    s.add_argument("--model", help="trained run directory")
    s.add_argument("--catalog", help="catalog to encode")
    s.add_argument("--batch-size", type=_positive_int, default=32)
    s.add_argument(
        "--workers", type=int, default=None, help="decode workers for the end-to-end run (default: as mmrec encode)"
    )
    s.add_argument("--repeat", type=_positive_int, default=1, help="benchmark the catalog N times over")
    s.add_argument("--no-memory", action="store_true", help="skip the N vs 4N peak-memory check")
    s.add_argument("--device", default="auto")

    add("presets", "list the named config presets", cmd_presets)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet or args.json else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars on every model load are noise here
        args.fn(args)
    except UserError as e:
        print(f"mmrec {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmrec {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
