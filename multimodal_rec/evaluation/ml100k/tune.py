"""``mmrec eval --dataset ml-100k --tune``: each method's settings chosen on validation, written to ``tuned.json``.

The budget rule, the same for every trained method: the settings of its declared grid (:data:`GRIDS`, at most
:data:`MAX_SETTINGS` each), each trained once on seed 0's validation split (:mod:`.protocol`) with early stopping
(patience :data:`PATIENCE` epochs, at most the grid's epoch cap), the setting with the best validation NDCG@10
kept. The search reads the training histories only: the test targets are never passed to it. The committed
``tuned.json`` beside this module is what the default ``mmrec eval --dataset ml-100k`` reads.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import as_completed
from datetime import datetime, timezone
from itertools import product
from pathlib import Path
from typing import Any

from multimodal_rec.errors import UserError
from multimodal_rec.evaluation.ml100k.methods import fit_and_score, load_tuned, trainings_pool
from multimodal_rec.progress import ProgressFn, no_progress

LOG = logging.getLogger(__name__)
PATIENCE = 20  # epochs without a better validation NDCG@10 before a training stops (every method; SASRec's
# validation plateaus for 5-10 epochs before it climbs again: with 5 it stopped at epoch 16 of the 46 it needs)
MAX_SETTINGS = 4  # settings per method
TUNE_SEED = 0
TUNABLE = ("user_tower", "sasrec", "mult_dae", "bpr_mf")  # the slowest first: the pool finishes sooner


def _grid(fixed: dict[str, Any], **axes: Sequence[Any]) -> list[dict[str, Any]]:
    return [{**fixed, **dict(zip(axes, values, strict=True))} for values in product(*axes.values())]


def _tower(hidden: int, max_history: int, recent: int = 0, per_user: int = 0, dropout: float = 0.2) -> dict[str, Any]:
    user = {"input_proj": hidden, "hidden": hidden, "attn_dim": 64, "max_history": max_history}
    user |= {"proj_hidden": 0, "dropout": dropout}
    train = {"epochs": 60, "early_stop_patience": PATIENCE}
    return {"model": {"user": user}, "train": train, "recent": recent, "per_user": per_user}


def _dae(hidden: int, latent: int, dropout: float) -> dict[str, Any]:
    return {"epochs": 200, "patience": PATIENCE, "lr": 1e-3, "hidden": hidden, "latent": latent, "dropout": dropout}


GRIDS: dict[str, list[dict[str, Any]]] = {
    # the shipped tower (the 20 most recent targets of each user, window 20), then 10 or 20 targets per user drawn
    # afresh each epoch from the whole history (window 50, as SASRec's). An LSTM of 128 was dropped: 50 s an epoch,
    # still climbing at epoch 26 (validation 0.1105), it alone would have taken the default run past an hour.
    # the 4th setting (dropout 0.5, what SASRec chose) was searched alone on 2026-12-01 and spliced in
    "user_tower": [
        _tower(64, 20, recent=20),
        _tower(64, 50, per_user=10),
        _tower(64, 50, per_user=20),
        _tower(64, 50, per_user=20, dropout=0.5),
    ],
    "sasrec": _grid({"epochs": 200, "patience": PATIENCE, "max_len": 50}, dropout=(0.2, 0.5), lr=(1e-3, 2e-3)),
    "mult_dae": [_dae(200, 64, 0.5), _dae(600, 200, 0.5), _dae(200, 64, 0.2), _dae(600, 200, 0.2)],
    # BPR-MF: the first grid (dim 64/128, lr 0.005/0.02, reg 1e-4) chose its lowest lr and overfitted within 4-24
    # epochs (validation 0.0723); stronger L2 and lower Adam rates train longer and better (0.082-0.083 in a probe)
    "bpr_mf": _grid({"epochs": 400, "patience": PATIENCE, "dim": 128}, lr=(0.002, 0.005), reg=(1e-3, 3e-3)),
}


def estimate_seconds(methods: Sequence[str], jobs: int) -> float | None:
    """The committed run's measured training seconds for these methods' grids, divided among ``jobs`` processes."""
    try:
        doc = load_tuned()
    except UserError:
        return None
    per = [g.get("seconds") for m in methods for g in doc["methods"].get(m, {}).get("grid", [])]
    known = [float(s) for s in per if isinstance(s, (int, float))]
    return sum(known) / max(1, jobs) if known else None


def tune_ml100k(
    methods: Sequence[str] = TUNABLE,
    jobs: int = 0,
    out_file: str | Path | None = None,
    progress: ProgressFn = no_progress,
) -> dict[str, Any]:
    """Train every setting of each method's grid on seed 0's validation split; keep the best of each."""
    from multimodal_rec.evaluation.ml100k.movielens import load_ml100k
    from multimodal_rec.evaluation.ml100k.run import make_split
    from multimodal_rec.evaluation.ml100k.textrec import text_features

    bad = [m for m in methods if m not in GRIDS]
    if bad:
        raise UserError(f"--tune searches {', '.join(GRIDS)}, not {bad[0]!r}")
    too_many = [m for m in methods if len(GRIDS[m]) > MAX_SETTINGS]
    if too_many:
        raise UserError(f"the grid of {too_many[0]} has more than {MAX_SETTINGS} settings (the budget rule)")
    t0 = time.perf_counter()
    items, inter = load_ml100k()
    feats = text_features(list(items["text"]))
    train_seqs = make_split(inter, items, TUNE_SEED, "loo").seqs  # the histories only: the test targets stay behind
    work = [(m, i) for m in methods for i in range(len(GRIDS[m]))]
    jobs = jobs or max(1, min(len(work), os.cpu_count() or 1))
    LOG.info("ml-100k --tune: %d trainings in %d processes", len(work), jobs)
    bar = progress(total=len(work), desc="ml-100k tuning", unit="run")
    found: dict[str, list[dict[str, Any]]] = {m: [{}] * len(GRIDS[m]) for m in methods}
    with trainings_pool(jobs) as pool:
        futures = {pool.submit(_validate, m, train_seqs, feats, GRIDS[m][i]): (m, i) for m, i in work}
        for fut in as_completed(futures):  # the bar moves as each training ends, in whatever order
            m, i = futures[fut]
            found[m][i] = {"params": GRIDS[m][i], **fut.result()}
            LOG.info(
                "ml-100k --tune: %s setting %d: %s", m, i + 1, {k: found[m][i][k] for k in found[m][i] if k != "params"}
            )
            bar.update(1)
    bar.close()
    doc = {
        "protocol": "validation = each user's last training event (seed 0, loo split); early stopping on its "
        f"NDCG@10 with patience {PATIENCE}; test targets never read",
        "budget": f"at most {MAX_SETTINGS} settings per method, one training each, epochs capped by the setting",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 1),
        "methods": {m: _choose(found[m]) for m in methods},
    }
    if out_file is not None:
        out = Path(out_file)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(out)
    return doc


def _validate(method: str, train_seqs: list[Any], feats: Any, params: dict[str, Any]) -> dict[str, Any]:
    """One setting: its validation figure, best epoch and cost (the scores are not needed)."""
    _, report = fit_and_score(method, TUNE_SEED, train_seqs, feats, params)
    return report


def _choose(rows: list[dict[str, Any]]) -> dict[str, Any]:
    best = max(rows, key=lambda r: r.get("val_ndcg@10", float("-inf")))
    keep = ("val_ndcg@10", "best_epoch", "epochs_run", "seconds")
    return {"params": best["params"], **{k: best.get(k) for k in keep}, "grid": rows}


def format_tuned(doc: dict[str, Any]) -> str:
    """The search as a table: each method's settings, validation NDCG@10, best epoch and seconds; * = chosen."""
    lines = [f"ml-100k tuning ({doc['protocol']}); {doc['seconds']:.0f} s"]
    for m, entry in doc["methods"].items():
        for row in entry["grid"]:
            mark = "*" if row["params"] == entry["params"] else " "
            lines.append(
                f"{mark} {m:<11} val NDCG@10 {row.get('val_ndcg@10', float('nan')):.4f}  best epoch "
                f"{row.get('best_epoch')!s:>3} of {row.get('epochs_run')!s:>3}  {row.get('seconds', 0):>6.0f} s  "
                f"{json.dumps(row['params'], separators=(',', ':'))}"
            )
    return "\n".join(lines)
