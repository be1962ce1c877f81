"""``mmrec bench``: measured throughput ratios of encoding, FAISS indexes, search and the HTTP service."""

from __future__ import annotations

import argparse
import json

from multimodal_rec.cli.common import Subparsers, add_command, positive_int, print_json
from multimodal_rec.errors import UserError


def _bench_encode(a: argparse.Namespace) -> None:
    from multimodal_rec.bench import encode as bench

    if a.long:
        return _bench_encode_long(a)
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


def _bench_encode_long(a: argparse.Namespace) -> None:
    from multimodal_rec.bench import encode_long as bench

    if not a.model:
        raise UserError("bench encode --long needs --model RUN (and --catalog of long videos, or one is made)")
    res = bench.bench_encode_long(
        a.model,
        a.catalog,
        sizes=a.long_sizes,
        parts=a.parts,
        seed=a.seed,
        batch_size=a.batch_size,
        workers=a.workers,
        memory=not a.no_memory,
        device=a.device,
    )
    print(json.dumps(res) if a.json else bench.format_encode_long(res))


def _bench_index(a: argparse.Namespace) -> None:
    from multimodal_rec.bench.index import bench_index, format_bench_index

    res = bench_index(sizes=a.sizes, d=a.dim, nq=a.nq, k=a.k, seed=a.seed, candidates=a.candidates)
    if a.json:
        print_json(res)
    else:
        print(format_bench_index(res))


def _bench_search_or_serve(a: argparse.Namespace) -> None:
    from multimodal_rec.bench import serve as bench_serve

    if not a.bundle:
        raise UserError(f"bench {a.what} needs --bundle BUNDLE")
    if a.text_backend:
        return _bench_variants(a)
    if a.what == "search":
        res = bench_serve.bench_search(a.bundle, queries=a.queries, k=a.k, seed=a.seed, device=a.device, mode=a.mode)
        text = bench_serve.format_search
    else:
        res = bench_serve.bench_serve(
            a.bundle,
            requests=a.requests,
            concurrency=a.concurrency,
            k=a.k,
            seed=a.seed,
            workers=_serve_workers(a),
            inprocess=not a.no_inprocess,
        )
        text = bench_serve.format_serve
    if a.json:
        print_json(res)
    else:
        print(text(res))


def _serve_workers(a: argparse.Namespace) -> int:
    """bench serve's ``--workers``: the server's worker processes (default 1)."""
    if a.workers is None:
        return 1
    if a.workers < 1:
        raise UserError(f"--workers must be >= 1 for bench serve, got {a.workers}")
    return int(a.workers)


def _bench_variants(a: argparse.Namespace) -> None:
    from multimodal_rec.bench import backends

    if a.what == "search":
        res = backends.bench_variants_search(
            a.bundle, a.text_backend, queries=a.queries, k=a.k, seed=a.seed, mode=a.mode
        )
        text = backends.format_variants_search
    else:
        res = backends.bench_variants_serve(
            a.bundle,
            a.text_backend,
            a.requests,
            a.concurrency,
            a.k,
            a.seed,
            workers=_serve_workers(a),
            inprocess=not a.no_inprocess,
        )
        text = backends.format_variants_serve
    if a.json:
        print_json(res)
    else:
        print(text(res))


def _bench_grow(a: argparse.Namespace) -> None:
    from multimodal_rec.bench.grow import grow_bundle

    if not a.bundle or not a.out or not a.videos:
        raise UserError("bench grow needs --bundle BUNDLE --videos N --out DIR")
    res = grow_bundle(a.bundle, a.out, a.videos, noise=a.noise, seed=a.seed)
    if a.json:
        print_json(res)
    else:
        print(
            f"wrote {res['bundle']}: {res['videos']} videos ({res['real_videos']} real), index {res['index']} "
            f"(built in {res['index_build_s']} s), {res['seconds']} s in all"
        )


_BENCHES = {
    "encode": _bench_encode,
    "grow": _bench_grow,
    "index": _bench_index,
    "search": _bench_search_or_serve,
    "serve": _bench_search_or_serve,
}


def cmd_bench(a: argparse.Namespace) -> None:
    _BENCHES[a.what](a)


def add_bench(sub: Subparsers) -> None:
    s = add_command(sub, "bench", "benchmarks: measured throughput ratios (not tests)", cmd_bench)
    s.add_argument(
        "what",
        choices=["encode", "index", "search", "serve", "grow"],
        help="encode: decode-only vs model-only vs end-to-end, and memory; "
        "index: FAISS candidates on synthetic vectors (build, memory, latency, recall vs exact); "
        "search: Recommender.search/recommend latency and overhead over model + FAISS; "
        "serve: HTTP load test of mmrec serve, the server's memory, and the same requests in-process; "
        "grow: a copy of --bundle grown to --videos with synthetic videos near its own (to bench search/serve at 1M)",
    )
    s.add_argument("--model", help="trained run directory")
    s.add_argument("--catalog", help="catalog to encode")
    s.add_argument("--batch-size", type=positive_int, default=32)
    s.add_argument(
        "--workers",
        type=int,
        default=None,
        help="encode: decode workers for the end-to-end run (default: as mmrec encode); "
        "serve: the server's worker processes, mmrec serve --workers N (default 1)",
    )
    s.add_argument("--repeat", type=positive_int, default=1, help="benchmark the catalog N times over")
    s.add_argument("--no-memory", action="store_true", help="skip the N vs 4N peak-memory check")
    g = s.add_argument_group("bench encode --long")
    g.add_argument(
        "--long",
        action="store_true",
        help="encode: long videos (segments) of --catalog, or of a long world made for the run (mmrec synth --long)",
    )
    g.add_argument(
        "--long-sizes", type=positive_int, nargs="+", default=[1, 2, 4], help="videos per run (default 1 2 4)"
    )
    g.add_argument("--parts", type=positive_int, default=6, help="parts per made long video (default 6)")
    s.add_argument("--device", default="auto", help="encode, search: auto, cpu or cuda (where the model runs)")
    s.add_argument("-k", type=positive_int, default=10, help="index, search, serve: recall@k / hits (default 10)")
    s.add_argument("--seed", type=int, default=0, help="index, search, serve: seed of the vectors or queries")
    g = s.add_argument_group("bench index")
    g.add_argument(
        "--sizes", type=positive_int, nargs="+", default=[100_000, 1_000_000], help="catalog sizes (default 100k 1M)"
    )
    g.add_argument(
        "--dim", type=positive_int, default=257, help="vector dim (default 257: embed_dim 256 + the prior column)"
    )
    g.add_argument("--nq", type=positive_int, default=1000, help="queries (recall and batch throughput)")
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
    g.add_argument("--queries", type=positive_int, default=500, help="bench search: queries and histories timed")
    g.add_argument("--requests", type=positive_int, default=2000, help="bench serve: requests sent in all")
    g.add_argument("--concurrency", type=positive_int, default=16, help="bench serve: requests in flight")
    g.add_argument(
        "--no-inprocess",
        action="store_true",
        help="bench serve: skip the in-process run of the same requests (the HTTP / in-process ratio; quicker)",
    )
    g.add_argument(
        "--text-backend",
        metavar="LIST",
        help="bench search / serve: compare query-encoding variants side by side, e.g. torch,onnx,onnx-int8 "
        "(always with 'before': torch, one query at a time, no stored item features); ratios to before",
    )
    g.add_argument(
        "--mode",
        choices=["vector", "lexical", "hybrid"],
        default=None,
        help="bench search: the search mode timed (default: the bundle's, hybrid when its catalog has text)",
    )
    g = s.add_argument_group("bench grow")
    g.add_argument("--videos", type=positive_int, help="bench grow: videos in the grown bundle, e.g. 1000000")
    g.add_argument("--out", help="bench grow: the new bundle's directory (must not exist)")
    g.add_argument(
        "--noise",
        type=float,
        default=0.5,
        help="bench grow: norm of the noise moving each synthetic vector off its source video's (default 0.5: "
        "cosine ~0.9 to it)",
    )
