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
FILTER_EXPR_HELP = (
    "metadata filter: COLUMN=VALUE (equal; A,B,C = any of them), COLUMN<=VALUE or COLUMN>=VALUE (inclusive, numeric "
    "or date columns); repeatable, all must hold, e.g. --filter color=red,blue --filter 'duration_s<=60'"
)


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
    from multimodal_rec.data.synth import make_world

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
    from multimodal_rec.training.train import train

    cfg = load_config(a.config, _overrides(a.set))
    if a.epochs is not None:
        cfg.train.epochs = a.epochs
    res = train(cfg, a.data, a.out, resume=a.resume, progress=tqdm_progress(a.quiet))
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports (and writes)
        return
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
    from multimodal_rec.encoding.job import default_workers, encode_catalog

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
    from multimodal_rec.serving.export import export_bundle

    res = export_bundle(a.bundle, a.to, out=a.out, url=a.url, collection=a.collection)
    info = {"to": res.target, "where": res.where, "collection": res.collection, "count": res.count, "dim": res.dim}
    if a.json:
        _print_json(info)
    else:
        print(f"exported {res.count} vectors (dim {res.dim}) to {res.target} {res.where}, collection {res.collection}")


def _load(bundle: str):
    from multimodal_rec.serving.recommender import Recommender

    return Recommender.load(bundle)


def _filters(rec: Any, exprs: Sequence[str]) -> dict[str, Any] | None:
    from multimodal_rec.serving.filters import parse_filter_exprs

    return parse_filter_exprs(exprs, rec.catalog) or None


def cmd_search(a: argparse.Namespace) -> None:
    if a.contact_sheet and len(a.query) != 1:
        raise UserError("--contact-sheet draws the hits of one query: give exactly one")
    rec = _load(a.bundle)
    results = rec.search_batch(a.query, k=a.k, filters=_filters(rec, a.filter))
    if a.contact_sheet:
        from multimodal_rec.serving.contact_sheet import rows_for_hits, write_contact_sheet

        rows = rows_for_hits(rec, results[0])
        title = f"query: {a.query[0]!r}"
        sheet = write_contact_sheet(rows, a.contact_sheet, frames=a.sheet_frames, size=a.sheet_px, title=title)
        LOG.info("contact sheet of %d hits written to %s", len(results[0]), sheet)
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
    hits = rec.recommend(
        a.history, k=a.k, exclude=a.exclude or (), filters=_filters(rec, a.filter), exclude_seen=not a.include_seen
    )
    why = rec.explain(a.history)
    if a.json:
        _print_json({"hits": [h.to_dict() for h in hits], "attention": [{"text": t, "weight": w} for t, w in why]})
        return
    _print_hits(f"recommend for a history of {len(a.history)} items:", hits)
    top = max(why, key=lambda x: x[1])
    print(f"  because of: {top[0]!r} (attention {top[1]:.2f})")


def cmd_eval(a: argparse.Namespace) -> None:
    from multimodal_rec.evaluation.bundle_eval import evaluate, format_report

    if a.dataset is not None:
        return _eval_dataset(a)
    if not a.bundle or not a.data:
        raise UserError("give --bundle and --data (a trained bundle and its data directory), or --dataset ml-100k")
    res = evaluate(_load(a.bundle), a.data, seeds=a.seeds or 1, id_baselines=not a.no_id_baselines)
    if a.plot:
        from multimodal_rec.evaluation.bundle_eval import plot_user_recall

        plot_user_recall(res, a.plot)
    if a.json:
        _print_json(res)
    else:
        print(format_report(res))


def _eval_dataset(a: argparse.Namespace) -> None:
    from multimodal_rec.evaluation.ml100k.run import DEFAULT_METHODS, evaluate_ml100k, format_ml100k

    config: dict[str, Any] = {}
    for key, value in _overrides(a.set).items():
        section, _, rest = key.partition(".")
        if section not in ("model", "train", "recent") or (section != "recent" and not rest):
            raise UserError(f"--set keys for --dataset are model.X, train.X or recent, got {key!r}")
        if section == "recent":
            config["recent"] = value
        else:
            node = config.setdefault(section, {})
            *parents, leaf = rest.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
    res = evaluate_ml100k(
        seeds=a.seeds or 3,
        methods=a.methods or DEFAULT_METHODS,
        split=a.split,
        jobs=a.jobs,
        config=config,
        out_dir=a.out,
        progress=tqdm_progress(a.quiet or a.json),
    )
    if a.json:
        _print_json({k: v for k, v in res.items() if k != "recall_curve"})
    else:
        print(format_ml100k(res))
        print(f"results.json and recall_at_k.png in {a.out}")


def cmd_serve(a: argparse.Namespace) -> None:
    from multimodal_rec.serving.http import run_server

    run_server(a.bundle, host=a.host, port=a.port, workers=a.workers)


def cmd_bench(a: argparse.Namespace) -> None:
    from multimodal_rec.bench import encode as bench

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
    elif a.what == "index":
        from multimodal_rec.bench.index import bench_index, format_bench_index

        res = bench_index(sizes=a.sizes, d=a.dim, nq=a.nq, k=a.k, seed=a.seed, candidates=a.candidates)
        if a.json:
            _print_json(res)
        else:
            print(format_bench_index(res))
    elif a.what in ("search", "serve"):
        from multimodal_rec.bench import serve as bench_serve

        if not a.bundle:
            raise UserError(f"bench {a.what} needs --bundle BUNDLE")
        if a.what == "search":
            res = bench_serve.bench_search(a.bundle, queries=a.queries, k=a.k, seed=a.seed, device=a.device)
            text = bench_serve.format_search
        else:
            res = bench_serve.bench_serve(a.bundle, requests=a.requests, concurrency=a.concurrency, k=a.k, seed=a.seed)
            text = bench_serve.format_serve
        if a.json:
            _print_json(res)
        else:
            print(text(res))


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
    s.add_argument("--filter", action="append", default=[], metavar="EXPR", help=FILTER_EXPR_HELP)
    s.add_argument("--contact-sheet", metavar="PNG", help="also draw the hits as rows of sampled frames into PNG")
    s.add_argument("--sheet-frames", type=_positive_int, default=6, help="frames per contact-sheet row (default 6)")
    s.add_argument("--sheet-px", type=_positive_int, default=96, help="contact-sheet frame size in px (default 96)")

    s = add("recommend", "user history -> videos", cmd_recommend)
    s.add_argument("--bundle", required=True)
    s.add_argument("--history", nargs="+", required=True, help="texts the user engaged with, oldest first")
    s.add_argument("--exclude", nargs="*", help="video ids not to recommend")
    s.add_argument("-k", type=int, default=10, help="hits (1..1000)")
    s.add_argument("--filter", action="append", default=[], metavar="EXPR", help=FILTER_EXPR_HELP)
    s.add_argument(
        "--include-seen",
        action="store_true",
        help="also recommend videos the history names (an item equal to a video id or title); skipped by default",
    )

    s = add("eval", "full-ranking evaluation: a bundle on its data directory, or --dataset ml-100k", cmd_eval)
    s.add_argument("--bundle", help="bundle to evaluate (with --data)")
    s.add_argument("--data", help="data directory (held-out split + last events)")
    s.add_argument(
        "--dataset",
        choices=["ml-100k"],
        help="train and evaluate the user tower and every baseline on a public data set (needs recbole --no-deps)",
    )
    s.add_argument(
        "--seeds", type=_positive_int, default=None, help="seeds, mean ± std (default: 3 --dataset, 1 bundle)"
    )
    s.add_argument("--plot", metavar="PNG", help="bundle: write Recall@K curves of the user->video methods here")
    s.add_argument("--no-id-baselines", action="store_true", help="bundle: skip BPR-MF, Mult-DAE and SASRec")
    s.add_argument("--split", choices=["loo", "time"], default="loo", help="--dataset: leave-last-out or global time")
    s.add_argument("--methods", nargs="+", metavar="METHOD", help="--dataset: subset of methods (default: all main)")
    s.add_argument("--jobs", type=int, default=0, help="--dataset: parallel training processes (default: cores)")
    s.add_argument("--out", default="eval_out/ml-100k", help="--dataset: where results.json + recall_at_k.png go")
    s.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="--dataset: model.X / train.X / recent"
    )

    s = add("serve", "HTTP service over a bundle (needs the serve extra: pip install -e '.[serve]')", cmd_serve)
    s.add_argument("--bundle", required=True)
    s.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=_positive_int, default=1, help="uvicorn worker processes")

    s = add("bench", "benchmarks: measured throughput ratios (not tests)", cmd_bench)
    s.add_argument(
        "what",
        choices=["encode", "index", "search", "serve"],
        help="encode: decode-only vs model-only vs end-to-end, and memory; "
        "index: FAISS candidates on synthetic vectors (build, memory, latency, recall vs exact); "
        "search: Recommender.search/recommend latency and overhead over model + FAISS; "
        "serve: HTTP load test of mmrec serve",
    )
    s.add_argument("--model", help="trained run directory")
    s.add_argument("--catalog", help="catalog to encode")
    s.add_argument("--batch-size", type=_positive_int, default=32)
    s.add_argument(
        "--workers", type=int, default=None, help="decode workers for the end-to-end run (default: as mmrec encode)"
    )
    s.add_argument("--repeat", type=_positive_int, default=1, help="benchmark the catalog N times over")
    s.add_argument("--no-memory", action="store_true", help="skip the N vs 4N peak-memory check")
    s.add_argument("--device", default="auto", help="encode, search: auto, cpu or cuda (where the model runs)")
    s.add_argument("-k", type=_positive_int, default=10, help="index, search, serve: recall@k / hits (default 10)")
    s.add_argument("--seed", type=int, default=0, help="index, search, serve: seed of the vectors or queries")
    g = s.add_argument_group("bench index")
    g.add_argument(
        "--sizes", type=_positive_int, nargs="+", default=[100_000, 1_000_000], help="catalog sizes (default 100k 1M)"
    )
    g.add_argument(
        "--dim", type=_positive_int, default=257, help="vector dim (default 257: embed_dim 256 + the prior column)"
    )
    g.add_argument("--nq", type=_positive_int, default=1000, help="queries (recall and batch throughput)")
    g.add_argument(
        "--candidates",
        nargs="+",
        default=None,
        metavar="NAME",
        help="what to build: flat hnsw ivf ivfpq or FAISS factory strings (default: all; the size's default is "
        "always added)",
    )
    g = s.add_argument_group("bench search / bench serve")
    g.add_argument("--bundle", help="bundle directory (mmrec encode --out)")
    g.add_argument("--queries", type=_positive_int, default=500, help="bench search: queries and histories timed")
    g.add_argument("--requests", type=_positive_int, default=2000, help="bench serve: requests sent in all")
    g.add_argument("--concurrency", type=_positive_int, default=16, help="bench serve: requests in flight")

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
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request: noise in bench serve
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
