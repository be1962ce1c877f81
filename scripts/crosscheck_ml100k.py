#!/usr/bin/env python3
"""Independent cross-check of the ml-100k BPR-MF baseline (issue 17): Cornac's BPR (and EASE) on our exact protocol.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD .venv/bin/python scripts/crosscheck_ml100k.py [--seeds 3] [--methods bpr ease]
        [--json]

Needs Cornac (``pip install cornac``; 3.0.1 was used). For each seed: the leave-last-out split of
``multimodal_rec.evaluation.ml100k.run.make_split`` and its validation split
(``multimodal_rec.evaluation.ml100k.protocol.validation_split``); the model trains on the validation split's
histories (every (user, movie) pair a positive, implicit feedback). A small declared grid (``BPR_GRID``,
``EASE_GRID``) is searched on seed 0's validation NDCG@10 (``protocol.validation_ndcg``: the validation targets,
each user's validation-training items excluded); with the chosen setting every seed is trained on its validation
histories again and scored on the test targets with the whole training history (validation event included)
excluded, through ``run.LeaveOut`` (full ranking over all 1682 movies, ties against the target): the ``val``
row. Two more rows say how much the validation event is worth at test time: ``refit`` trains the chosen setting
on the whole training history (the usual train+validation refit), and for EASE ``foldin`` keeps the model
trained on the validation histories but scores each user's whole training history, ``x_u · B`` (as the
sequential models and Mult-DAE do, which read the whole history as input; BPR-MF has no such fold-in).

Cornac renumbers users and items in its own order (the script gives it string ids on purpose); its scores are
mapped back to our item rows through the Dataset's ``iid_map``. A movie Cornac never saw in training gets score
``-inf``, so it ranks last (behind every seen movie; ties count against the target, so a never-seen target ranks
after all of them). As a check on our metrics code, NDCG@10 of the test targets is also computed here by a plain
argsort (``ndcg@10_argsort``); the two must agree.

Prints the grid (each setting's validation NDCG@10 and fit time), the chosen setting, and per method the test
NDCG@10 and Recall@10, mean ± std over seeds (population std, as ``mmrec eval``); with ``--json``, one JSON object.
Beyond-accuracy metrics are not reported: ``LeaveOut`` is given random unit vectors (it needs item vectors only
for diversity).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

BPR_GRID: dict[str, tuple[Any, ...]] = {
    "k": (64, 128),
    "learning_rate": (0.01, 0.05),
    "lambda_reg": (0.001, 0.01),
    "max_iter": (100, 200, 400),
}
EASE_GRID: dict[str, tuple[Any, ...]] = {"lamb": (50, 100, 200, 400, 800, 1600)}
GRIDS = {"bpr": BPR_GRID, "ease": EASE_GRID}
VARIANTS = {"bpr": ("val", "refit"), "ease": ("val", "refit", "foldin")}  # how the test scores are made
VARIANT_NAMES = {"val": "trained on val.seqs", "refit": "refit on all history", "foldin": "val.seqs + fold-in"}


def make_model(method: str, params: dict[str, Any], seed: int) -> Any:
    """A fresh Cornac model (BPR: one thread, seeded, so it is reproducible)."""
    from cornac.models import BPR, EASE

    if method == "bpr":
        return BPR(**params, seed=seed, num_threads=1, verbose=False)
    return EASE(**params, seed=seed, verbose=False)


def cornac_scores(
    model: Any, seqs: Sequence[np.ndarray], n_items: int, fold_in: Sequence[np.ndarray] | None = None
) -> np.ndarray:
    """Fit ``model`` on every (user, item) pair of ``seqs``; ``[len(seqs), n_items]`` scores in our item rows.

    Movies Cornac never saw score ``-inf`` (rank last); a user with no history scores ``-inf`` everywhere.
    ``fold_in`` (EASE only): score these histories instead of the training ones, ``x_u · B``.
    """
    from cornac.data import Dataset

    triples = [(f"u{u}", f"i{int(i)}", 1.0) for u, s in enumerate(seqs) for i in s]
    ds = Dataset.build(triples, fmt="UIR")
    model.fit(ds)
    ours = np.array([int(raw[1:]) for raw in ds.iid_map])  # our item row of each Cornac item
    theirs = np.array(list(ds.iid_map.values()))  # that item's Cornac index
    out = np.full((len(seqs), n_items), -np.inf)
    if fold_in is not None:
        col = dict(zip(ours.tolist(), theirs.tolist(), strict=True))
        x = np.zeros((len(fold_in), len(col)))
        for u, s in enumerate(fold_in):
            x[u, [col[int(i)] for i in s if int(i) in col]] = 1.0
        out[:, ours] = (x @ np.asarray(model.B))[:, theirs]
        return out
    for u in range(len(seqs)):
        cu = ds.uid_map.get(f"u{u}")
        if cu is not None:
            out[u, ours] = np.asarray(model.score(cu), dtype=np.float64).ravel()[theirs]
    return out


def argsort_ndcg10(scores: np.ndarray, targets: np.ndarray, seen: np.ndarray) -> float:
    """NDCG@10 by sorting each row (seen items pushed to the bottom): an independent check of ``target_ranks``."""
    s = np.where(seen, -np.inf, scores)
    top = np.argsort(-s, axis=1, kind="stable")[:, :10]
    hit = top == targets[:, None]
    pos = np.argmax(hit, axis=1) + 1
    return float(np.where(hit.any(1), 1.0 / np.log2(pos + 1), 0.0).mean())


def search(
    method: str, fit_val: Callable[[Any], np.ndarray], score_val: Callable[[np.ndarray], float]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every setting of the method's grid on seed 0's validation split; the best by validation NDCG@10."""
    grid = GRIDS[method]
    rows = []
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid, values, strict=True))
        t0 = time.perf_counter()
        scores = fit_val(make_model(method, params, seed=0))
        rows.append({"params": params, "val_ndcg@10": score_val(scores), "seconds": time.perf_counter() - t0})
    best = max(rows, key=lambda r: r["val_ndcg@10"])
    return best, rows


def evaluate_seed(method: str, params: dict[str, Any], seed: int, inter: Any, items: Any) -> dict[str, Any]:
    """The chosen setting on one seed: validation NDCG@10, and test metrics when trained on val / all history."""
    from multimodal_rec.evaluation.ml100k.protocol import validation_ndcg, validation_split
    from multimodal_rec.evaluation.ml100k.run import LeaveOut, make_split

    n_items = len(items)
    sp = make_split(inter, items, seed, "loo")
    val = validation_split(sp.seqs)
    vecs = np.random.default_rng(seed).normal(size=(n_items, 8))
    ev = LeaveOut.of(sp, vecs / np.linalg.norm(vecs, axis=1, keepdims=True))
    out: dict[str, Any] = {"seed": seed, "test_users": int(ev.keep.sum())}
    for variant in VARIANTS[method]:
        t0 = time.perf_counter()
        seqs = sp.seqs if variant == "refit" else val.seqs
        fold_in = sp.seqs if variant == "foldin" else None
        scores = cornac_scores(make_model(method, params, seed), seqs, n_items, fold_in)
        m = ev.metrics(scores[sp.users])
        keep = ev.keep
        out[variant] = {
            "ndcg@10": m["ndcg@10"],
            "recall@10": m["recall@10"],
            "ndcg@10_argsort": argsort_ndcg10(scores[sp.users][keep], sp.targets[keep], ev.seen[keep]),
            "seconds": time.perf_counter() - t0,
        }
        if variant == "val":
            out["val_ndcg@10"] = validation_ndcg(scores, val)
    return out


def run_method(
    method: str, seeds: int, inter: Any, items: Any
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """Grid search on seed 0's validation split, then the chosen setting on every seed; mean ± std."""
    from multimodal_rec.evaluation.ml100k.protocol import validation_ndcg, validation_split
    from multimodal_rec.evaluation.ml100k.run import make_split

    val0 = validation_split(make_split(inter, items, 0, "loo").seqs)
    best, rows = search(
        method, lambda model: cornac_scores(model, val0.seqs, len(items)), lambda s: validation_ndcg(s, val0)
    )
    per_seed = [evaluate_seed(method, best["params"], s, inter, items) for s in range(seeds)]
    summary: dict[str, Any] = {}
    for variant in VARIANTS[method]:
        for k in ("ndcg@10", "recall@10", "ndcg@10_argsort"):
            xs = [r[variant][k] for r in per_seed]
            summary[f"{variant}/{k}"] = {"mean": float(np.mean(xs)), "std": float(np.std(xs))}
    xs = [r["val_ndcg@10"] for r in per_seed]
    summary["val_ndcg@10"] = {"mean": float(np.mean(xs)), "std": float(np.std(xs))}
    return {"grid": {k: list(v) for k, v in GRIDS[method].items()}, "search": rows, "chosen": best}, per_seed, summary


def _mean_std(summary: dict[str, Any]) -> Callable[[str], str]:
    """``key -> "mean ± std"`` of one method's summary."""
    return lambda key: f"{summary[key]['mean']:.4f} ± {summary[key]['std']:.4f}"


def format_report(res: dict[str, Any]) -> str:
    """The grid, the choice and the test figures as plain text."""
    lines = [f"ml-100k loo split, {res['seeds']} seed(s), Cornac {res['cornac']}, {res['seconds']:.0f} s in all"]
    for method, r in res["methods"].items():
        lines.append(f"\n{method}: grid on seed 0's validation NDCG@10 ({len(r['search'])} settings)")
        for row in r["search"]:
            setting = json.dumps(row["params"])
            lines.append(f"  {setting:<70} val NDCG@10 {row['val_ndcg@10']:.4f}  {row['seconds']:.1f} s")
        c = r["chosen"]
        lines.append(f"  chosen: {json.dumps(c['params'])}  val NDCG@10 {c['val_ndcg@10']:.4f}")
        ms = _mean_std(r["summary"])
        lines.append(f"  validation NDCG@10 over seeds: {ms('val_ndcg@10')}")
        for v in VARIANTS[method]:
            what = VARIANT_NAMES[v]
            lines.append(f"  test, {what:<21} NDCG@10 {ms(f'{v}/ndcg@10')}  Recall@10 {ms(f'{v}/recall@10')}")
        gap = max(abs(p[v]["ndcg@10"] - p[v]["ndcg@10_argsort"]) for p in r["per_seed"] for v in VARIANTS[method])
        lines.append(f"  |target_ranks NDCG@10 - argsort NDCG@10| max over seeds: {gap:.2e}")
    return "\n".join(lines)


def main() -> None:
    try:
        import cornac
    except ImportError:
        raise SystemExit("crosscheck_ml100k: needs Cornac, which is not a dependency: pip install cornac") from None

    from multimodal_rec.evaluation.ml100k.movielens import load_ml100k

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--methods", nargs="+", choices=sorted(GRIDS), default=["bpr", "ease"])
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    a = p.parse_args()
    t0 = time.perf_counter()
    items, inter = load_ml100k()
    methods = {}
    for method in a.methods:
        search_res, per_seed, summary = run_method(method, a.seeds, inter, items)
        methods[method] = {**search_res, "per_seed": per_seed, "summary": summary}
    res = {"seeds": a.seeds, "cornac": cornac.__version__, "seconds": time.perf_counter() - t0, "methods": methods}
    print(json.dumps(res, indent=2) if a.json else format_report(res))


if __name__ == "__main__":
    main()
