"""``mmrec encode`` (a catalog into a bundle) and ``mmrec export`` (a bundle into a vector database)."""

from __future__ import annotations

import argparse
from typing import Any

from multimodal_rec.cli.common import Subparsers, add_command, positive_int, print_json
from multimodal_rec.progress import tqdm_progress


def _encode_overrides(a: argparse.Namespace) -> dict[str, Any]:
    """The ``encode`` config fields given as flags (the rest come from the model's run config)."""
    cols = None if a.text_columns is None else [c.strip() for c in a.text_columns.split(",") if c.strip()]
    given = {
        "segment_seconds": a.segment_seconds,
        "max_segments": a.max_segments,
        "text_columns": cols,
        "text_weight": a.text_weight,
        "shots": True if a.shots else None,
    }
    return {k: v for k, v in given.items() if v is not None}


def cmd_encode(a: argparse.Namespace) -> None:
    from multimodal_rec.encoding import default_workers, encode_catalog

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
        encode=_encode_overrides(a),
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
        print_json(info)
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


def add_encode(sub: Subparsers) -> None:
    s = add_command(
        sub, "encode", "encode a video catalog into a bundle (model + embeddings + FAISS index)", cmd_encode
    )
    s.add_argument("--model", required=True, help="trained run directory (mmrec train --out)")
    s.add_argument("--catalog", required=True, help="catalog CSV/Parquet with video_id,path (paths relative to it)")
    s.add_argument("--out", required=True, help="bundle directory to write (replaced atomically)")
    s.add_argument("--batch-size", type=positive_int, default=32, help="clips per model batch")
    s.add_argument(
        "--workers",
        type=int,
        default=None,
        help="decoding worker processes (default: cores on a GPU, cores/2 on a CPU)",
    )
    s.add_argument("--device", default="auto", help="auto, cpu or cuda")
    s.add_argument(
        "--shard-size", type=positive_int, default=None, help="clips per resumable shard (default 8 batches)"
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
    s.add_argument("--ray-cpus", type=positive_int, default=None, help="CPUs of a local Ray (default: all cores)")
    s.add_argument(
        "--index-shards",
        type=positive_int,
        default=1,
        help="split the index into N shards by a hash of the video id (search merges them; the segment index "
        "stays one file)",
    )
    _add_encode_flags(s)


def _add_encode_flags(s: argparse.ArgumentParser) -> None:
    """Flags overriding the run config's ``encode`` section (segments and the video's own text)."""
    s.add_argument(
        "--segment-seconds",
        type=float,
        default=None,
        help="cut videos into windows of about this many seconds (<= 0: one segment per video; default: config, 5)",
    )
    s.add_argument(
        "--shots",
        action="store_true",
        default=None,
        help="cut at shot boundaries first (PySceneDetect), then each shot into --segment-seconds windows",
    )
    s.add_argument("--max-segments", type=int, default=None, help="most segments per video (default: config, 64)")
    s.add_argument(
        "--text-columns",
        default=None,
        metavar="COLS",
        help="comma-separated catalog columns holding a video's text (only those present are used; "
        "default: config, title,description,tags; '' for none)",
    )
    s.add_argument(
        "--text-weight",
        type=float,
        default=None,
        help="weight of the video's text in its vector, in [0, 1] (0: content only; default: config, 0.5)",
    )


def cmd_export(a: argparse.Namespace) -> None:
    from multimodal_rec.serving.export import export_bundle

    res = export_bundle(a.bundle, a.to, out=a.out, url=a.url, collection=a.collection)
    info = {"to": res.target, "where": res.where, "collection": res.collection, "count": res.count, "dim": res.dim}
    if a.json:
        print_json(info)
    else:
        print(f"exported {res.count} vectors (dim {res.dim}) to {res.target} {res.where}, collection {res.collection}")


def add_export(sub: Subparsers) -> None:
    s = add_command(
        sub, "export", "export a bundle's vectors + metadata to a vector database (needs '.[export]')", cmd_export
    )
    s.add_argument("--to", choices=["qdrant"], required=True, help="target database")
    s.add_argument("--bundle", required=True)
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="local database directory (Qdrant embedded mode, no server)")
    where.add_argument("--url", help="database server URL, e.g. http://localhost:6333")
    s.add_argument("--collection", default="videos", help="collection name (replaced if it exists)")
