"""MovieLens-100k leave-last-out benchmark of the ID-based baselines (popularity, BPR-MF, Mult-DAE, SASRec).

Each user's last interaction (time order, ties broken by item id) is the target; everything before it is the
training history. Every method scores the whole catalog (full ranking); metrics are reported both with the
user's training items excluded from the ranking (as ``mmrec eval`` does) and with nothing excluded.

    .venv/bin/python scripts/bench_ml100k_baselines.py [--seed 0] [--methods popularity bpr_mf mult_dae sasrec]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable

import numpy as np
import torch

from multimodal_rec.baselines import bpr_mf, mult_dae, sasrec
from multimodal_rec.metrics import ranking_metrics, target_ranks
from multimodal_rec.movielens import load_ml100k

LOG = logging.getLogger("bench_ml100k_baselines")
KS = (10, 20)


def metrics(ranks: np.ndarray) -> dict[str, float]:
    return ranking_metrics(ranks, KS)


def popularity(train_seqs: list[list[int]], n_items: int, seed: int = 0) -> np.ndarray:
    """Training-interaction counts, identical for every user (tiny noise breaks ties at random)."""
    counts = np.bincount(np.concatenate([np.asarray(s, np.int64) for s in train_seqs]), minlength=n_items)
    noise = 1e-6 * np.random.default_rng(seed).random(n_items)
    return np.tile(counts + noise, (len(train_seqs), 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", nargs="+", default=["popularity", "bpr_mf", "mult_dae", "sasrec"])
    ap.add_argument("--ties", choices=["id", "random"], default="id", help="order of same-timestamp events")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(name)s: %(message)s")

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    items, inter = load_ml100k()
    if args.ties == "random":  # reshuffle events that share a timestamp within a user
        key = np.random.default_rng(args.seed).random(len(inter))
        inter = inter.assign(_k=key).sort_values(["user_id", "timestamp", "_k"], kind="stable").drop(columns="_k")
    row = {v: i for i, v in enumerate(items["video_id"])}
    seqs, targets = [], []
    for _user, g in inter.groupby("user_id", sort=True):
        ids = [row[v] for v in g["video_id"]]
        seqs.append(ids[:-1])
        targets.append(ids[-1])
    n_items, tgt = len(items), np.array(targets)
    seen = np.zeros((len(seqs), n_items), dtype=bool)
    for u, s in enumerate(seqs):
        seen[u, s] = True
    LOG.info("%d users, %d items, %d training events, ties=%s", len(seqs), n_items, seen.sum(), args.ties)

    fns: dict[str, Callable[[], np.ndarray]] = {
        "popularity": lambda: popularity(seqs, n_items, seed=args.seed),
        "bpr_mf": lambda: bpr_mf(seqs, n_items, seed=args.seed),
        "mult_dae": lambda: mult_dae(seqs, n_items, seed=args.seed),
        "sasrec": lambda: sasrec(seqs, n_items, seed=args.seed),
    }
    results: dict[str, dict] = {}
    for name in args.methods:
        t0, c0 = time.perf_counter(), time.process_time()
        scores = fns[name]().astype(np.float64)
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        results[name] = {
            "seconds": round(secs, 1),
            "cpu_seconds": round(cpu, 1),  # all threads together; a fairer measure on a shared machine
            "exclude_seen": metrics(target_ranks(np.where(seen, -np.inf, scores), tgt)),
            "exclude_nothing": metrics(target_ranks(scores, tgt)),
        }
        LOG.info("%s done in %.1fs (%.1f CPU s)", name, secs, cpu)
    if args.json:
        print(json.dumps({"users": len(seqs), "items": n_items, "seed": args.seed, "ties": args.ties, **results}))
        return
    print(
        f"ml-100k leave-last-out, {len(seqs)} users, {n_items} items, full ranking, seed {args.seed}, ties {args.ties}"
    )
    print(f"{'':<12}{'wall':>8}{'CPU':>8}  {'-- seen items excluded --':^33}  {'-- nothing excluded --':^33}")
    print(
        f"{'method':<12}{'s':>8}{'s':>8}  {'NDCG@10':>10}{'Recall@10':>11}{'MRR':>12}"
        f"  {'NDCG@10':>10}{'Recall@10':>11}{'MRR':>12}"
    )
    for name, r in results.items():
        a, b = r["exclude_seen"], r["exclude_nothing"]
        print(
            f"{name:<12}{r['seconds']:>8.1f}{r['cpu_seconds']:>8.1f}"
            f"  {a['ndcg@10']:>10.4f}{a['recall@10']:>11.4f}{a['mrr']:>12.4f}"
            f"  {b['ndcg@10']:>10.4f}{b['recall@10']:>11.4f}{b['mrr']:>12.4f}"
        )


if __name__ == "__main__":
    main()
