"""``mmrec eval``: full-ranking evaluation of a bundle on its data directory, or of every method on ml-100k."""

from __future__ import annotations

import argparse
from typing import Any

from multimodal_rec.cli.common import (
    Subparsers,
    add_command,
    add_synonyms_flag,
    load_recommender,
    overrides,
    positive_int,
    print_json,
)
from multimodal_rec.errors import UserError
from multimodal_rec.progress import tqdm_progress


def cmd_eval(a: argparse.Namespace) -> None:
    from multimodal_rec.evaluation.bundle_eval import evaluate, format_report

    if a.queries is not None:
        return _eval_queries(a)
    if a.k or a.mode or a.synonyms:
        raise UserError("--k, --mode and --synonyms apply to --queries (a query file run through the bundle's search)")
    if a.dataset is not None:
        return _eval_dataset(a)
    if not a.bundle or not a.data:
        raise UserError("give --bundle and --data (a trained bundle and its data directory), or --dataset ml-100k")
    res = evaluate(load_recommender(a.bundle), a.data, seeds=a.seeds or 1, id_baselines=not a.no_id_baselines)
    if a.plot:
        from multimodal_rec.evaluation.bundle_eval import plot_user_recall

        plot_user_recall(res, a.plot)
    if a.json:
        print_json(res)
    else:
        print(format_report(res))


def _eval_queries(a: argparse.Namespace) -> None:
    from multimodal_rec.evaluation.query_file import DEFAULT_KS, evaluate_queries, format_queries

    if a.dataset is not None or a.data:
        raise UserError("--queries evaluates a bundle on a query file: give --bundle, not --data or --dataset")
    if not a.bundle:
        raise UserError("--queries needs --bundle (the bundle whose search answers the queries)")
    res = evaluate_queries(load_recommender(a.bundle, a.synonyms), a.queries, ks=a.k or DEFAULT_KS, mode=a.mode)
    if a.json:
        print_json(res)
    else:
        print(format_queries(res))


def _dataset_config(pairs: list[str]) -> dict[str, Any]:
    """``--set`` pairs of ``--dataset`` runs as the nested dict ``evaluate_ml100k`` takes (model.X, train.X, recent,
    per_user)."""
    config: dict[str, Any] = {}
    for key, value in overrides(pairs).items():
        section, _, rest = key.partition(".")
        flat = section in ("recent", "per_user")
        if section not in ("model", "train", "recent", "per_user") or (flat == bool(rest)):
            raise UserError(f"--set keys for --dataset are model.X, train.X, recent or per_user, got {key!r}")
        if flat:
            config[section] = value
        else:
            node = config.setdefault(section, {})
            *parents, leaf = rest.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
    return config


def _eval_dataset(a: argparse.Namespace) -> None:
    from multimodal_rec.evaluation.ml100k.run import DEFAULT_METHODS, evaluate_ml100k, format_ml100k

    if a.tune:
        return _tune_dataset(a)
    config = _dataset_config(a.set)
    res = evaluate_ml100k(
        seeds=a.seeds or 3,
        methods=a.methods or DEFAULT_METHODS,
        split=a.split,
        jobs=a.jobs,
        config=config,
        out_dir=a.out,
        progress=tqdm_progress(a.quiet),  # on stderr: --json keeps stdout to one object
        tuned=a.tuned,
    )
    if a.json:
        print_json({k: v for k, v in res.items() if k != "recall_curve"})
    else:
        print(format_ml100k(res))
        print(f"results.json and recall_at_k.png in {a.out}")


def _tune_dataset(a: argparse.Namespace) -> None:
    import os
    import sys
    from pathlib import Path

    from multimodal_rec.evaluation.ml100k.tune import GRIDS, TUNABLE, estimate_seconds, format_tuned, tune_ml100k

    if a.set or a.tuned or a.split != "loo" or a.seeds:
        raise UserError("--tune searches the declared grids on seed 0's loo split: drop --set/--tuned/--split/--seeds")
    methods = a.methods or TUNABLE
    jobs = a.jobs or min(sum(len(GRIDS.get(m, ())) for m in methods), os.cpu_count() or 1) or 1
    est = estimate_seconds(methods, jobs)
    out = Path(a.out) / "tuned.json"
    n = sum(len(GRIDS.get(m, ())) for m in methods)
    took = (f"{est:.0f} s" if est < 90 else f"{est / 60:.0f} min") if est else ""
    how_long = f"about {took} (the committed search's measured trainings)" if est else "time unknown"
    print(f"mmrec eval --tune: {n} trainings of {', '.join(methods)} in {jobs} processes, {how_long}", file=sys.stderr)
    doc = tune_ml100k(methods, jobs=jobs, out_file=out, progress=tqdm_progress(a.quiet))
    if a.json:
        print_json(doc)
    else:
        print(format_tuned(doc))
        print(f"chosen settings in {out}: later runs read them with --tuned {out}")


def add_eval(sub: Subparsers) -> None:
    s = add_command(
        sub, "eval", "full-ranking evaluation: a bundle on its data directory, or --dataset ml-100k", cmd_eval
    )
    s.add_argument("--bundle", help="bundle to evaluate (with --data or --queries)")
    s.add_argument(
        "--queries",
        metavar="CSV",
        help="a platform's judged queries: columns query,video_id (one relevant video per row) or query + attribute "
        "columns matched against the catalog's (e.g. query,color,shape,motion) -> P@K, R@K, nDCG@K, MRR",
    )
    s.add_argument("-k", "--k", type=positive_int, nargs="+", metavar="K", help="--queries: cut-offs (default 5 10)")
    s.add_argument(
        "--mode", choices=("vector", "lexical", "hybrid"), help="--queries: search mode (default: the bundle's)"
    )
    add_synonyms_flag(s)
    s.add_argument(
        "--data", help="data directory (held-out split + last events; with moments.csv: the long-video evaluation)"
    )
    s.add_argument(
        "--dataset",
        choices=["ml-100k"],
        help="train and evaluate the user tower and every baseline on a public data set (needs recbole --no-deps)",
    )
    s.add_argument(
        "--seeds", type=positive_int, default=None, help="seeds, mean ± std (default: 3 --dataset, 1 bundle)"
    )
    s.add_argument("--plot", metavar="PNG", help="bundle: write Recall@K curves of the user->video methods here")
    s.add_argument("--no-id-baselines", action="store_true", help="bundle: skip BPR-MF, Mult-DAE and SASRec")
    s.add_argument("--split", choices=["loo", "time"], default="loo", help="--dataset: leave-last-out or global time")
    s.add_argument("--methods", nargs="+", metavar="METHOD", help="--dataset: subset of methods (default: all main)")
    s.add_argument("--jobs", type=int, default=0, help="--dataset: parallel training processes (default: cores)")
    s.add_argument("--out", default="eval_out/ml-100k", help="--dataset: where results.json + recall_at_k.png go")
    s.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="--dataset: model.X, train.X, recent, per_user"
    )
    s.add_argument(
        "--tune",
        action="store_true",
        help="--dataset: choose each method's settings on validation (a declared grid; slow) and write "
        "OUT/tuned.json for later runs",
    )
    s.add_argument("--tuned", metavar="JSON", help="--dataset: settings a --tune run wrote (default: the committed)")
