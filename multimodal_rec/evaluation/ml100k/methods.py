"""One training of one ml-100k method under the validation protocol, shared by ``--tune`` and the final run.

:func:`fit_and_score` gets a method's settings (``params``), the training histories and nothing of the test
split: it cuts the validation split (:mod:`multimodal_rec.evaluation.ml100k.protocol`), trains with early
stopping on it, and scores the histories it is asked to score. The settings of each method live in
``tuned.json`` (written by ``mmrec eval --dataset ml-100k --tune``; the committed one ships with the package).
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from importlib import resources
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from multimodal_rec.errors import UserError
from multimodal_rec.evaluation.ml100k.protocol import VAL_METRIC, Validation, validation_split

TOWERS = ("user_tower", "user_tower_text_only", "user_tower_no_attention", "user_tower_unseen_items")
ID_BASELINES = ("bpr_mf", "mult_dae", "sasrec")
TUNED_FILE = "tuned.json"  # beside this module (package data); --tune writes one into --out


def settings_key(method: str) -> str:
    """The tuned entry a method reads: every tower variant is the tuned ``user_tower`` with one part changed."""
    return "user_tower" if method in TOWERS else method


def load_tuned(path: str | Path | None = None) -> dict[str, Any]:
    """The chosen settings per method: ``path``, else the ones committed with the package."""
    try:
        if path is None:
            text = resources.files("multimodal_rec.evaluation.ml100k").joinpath(TUNED_FILE).read_text()
        else:
            text = Path(path).read_text()
        doc = json.loads(text)
    except FileNotFoundError:
        raise UserError(f"no tuned settings at {path}: run mmrec eval --dataset ml-100k --tune first") from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read tuned settings {path or TUNED_FILE}: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("methods"), dict):
        raise UserError(f"{path or TUNED_FILE} is not a tuned-settings file (no 'methods' object)")
    return doc


def method_params(tuned: dict[str, Any], method: str) -> dict[str, Any]:
    """The chosen settings of ``method`` (a deep copy), or a one-line error naming the method."""
    entry = tuned["methods"].get(settings_key(method))
    if not isinstance(entry, dict) or not isinstance(entry.get("params"), dict):
        raise UserError(f"the tuned settings have no entry for {settings_key(method)!r}: re-run --tune")
    return copy.deepcopy(entry["params"])


def chosen_epochs(tuned: dict[str, Any], method: str) -> int | None:
    """The epoch count validation chose for ``method`` (the best epoch of the chosen setting), or None when the
    settings file has none (the final run then stops early on validation itself)."""
    best = tuned["methods"].get(settings_key(method), {}).get("best_epoch")
    return int(best) if isinstance(best, int) and best >= 1 else None


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` laid over ``base``, nested dicts merged key by key (a new dict)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


class _Inline(Executor):
    """``--jobs 1``: each job runs at once, in this process (no process start, tracebacks where they happen)."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as e:  # handed to .result(), as a pool would
            fut.set_exception(e)
        return fut


def trainings_pool(jobs: int) -> Executor:
    """Where the trainings run: a spawn process pool of ``jobs`` workers, or this process when ``jobs`` is 1."""
    return _Inline() if jobs == 1 else ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"))


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@_one_torch_thread()  # one training per core: the pool runs as many as there are cores
def fit_and_score(
    method: str,
    seed: int,
    train_seqs: list[np.ndarray],
    feats: np.ndarray,
    params: dict[str, Any],
    score_seqs: list[np.ndarray] | None = None,
    epochs: int | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Train ``method``; score ``score_seqs`` (default ``train_seqs``). Two ways, as in the protocol:

    - ``epochs`` None (tuning): on the validation split of ``train_seqs``, with early stopping on it;
    - ``epochs`` N (the final run): on the whole of ``train_seqs`` (the validation event included) for the N epochs
      that validation chose, with no validation (nothing is held out any more).

    Returns scores ``[len(score_seqs), n_items]`` and a report: best epoch, epochs run, the validation NDCG@10
    (tuning only) and the seconds.
    """
    if epochs is not None and epochs < 1:
        raise UserError(f"epochs must be >= 1, got {epochs}")
    # the final run: the whole training history, no validation targets (-1: none), the chosen epoch count
    val = validation_split(train_seqs) if epochs is None else Validation(train_seqs, np.full(len(train_seqs), -1))
    score_seqs = train_seqs if score_seqs is None else score_seqs
    report: dict[str, Any] = {}
    t0 = time.perf_counter()
    if method in ID_BASELINES:
        from multimodal_rec.evaluation import baselines

        if len(score_seqs) != len(train_seqs):
            raise UserError("the ID baselines score the users they were trained on: one history per user")
        common = {"train_seqs": val.seqs, "n_items": len(feats), "seed": seed, "score_seqs": score_seqs}
        if epochs is None:
            common |= {"val_targets": val.targets, "report": report}
        else:
            params = {k: v for k, v in params.items() if k != "patience"} | {"epochs": epochs}
            report |= {"best_epoch": epochs, "epochs_run": epochs}
        try:
            scores = getattr(baselines, method)(**params, **common)
        except TypeError as e:  # a setting the method does not take
            raise UserError(f"{method} settings {sorted(params)}: {e}") from None
    elif method in TOWERS:
        scores = _tower(method, seed, val, feats, params, score_seqs, report, epochs)
    else:
        raise UserError(f"{method!r} is not a trained method")
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return np.asarray(scores, dtype=np.float64), report


def _tower(
    method: str,
    seed: int,
    val: Any,
    feats: np.ndarray,
    params: dict[str, Any],
    score_seqs: list[np.ndarray],
    report: dict[str, Any],
    epochs: int | None,
) -> np.ndarray:
    from multimodal_rec.evaluation.ml100k.textrec import (
        default_train_config,
        score_users,
        textrec_config,
        train_textrec,
    )

    unknown = set(params) - {"model", "train", "recent", "per_user"}
    if unknown:
        raise UserError(f"tower settings take model, train, recent and per_user, not {sorted(unknown)}")
    tcfg = textrec_config(params.get("model"))
    if method == "user_tower_text_only":
        tcfg = replace(tcfg, id_dim=0)
    if method == "user_tower_no_attention":
        tcfg = replace(tcfg, user=replace(tcfg.user, attention=False))
    train = {"early_stop_metric": VAL_METRIC, **params.get("train", {}), "seed": seed}
    if epochs is not None:  # no validation: the epoch count was chosen by it
        train = {k: v for k, v in train.items() if k not in ("early_stop_metric", "early_stop_patience")}
    tc = default_train_config(**train)
    with tempfile.TemporaryDirectory(prefix="mmrec-ml100k-") as tmp:
        model = train_textrec(
            val.seqs,
            feats,
            tcfg,
            tc,
            tmp,
            val_targets=val.targets if epochs is None else None,
            recent=int(params.get("recent", 0)),
            per_user=int(params.get("per_user", 0)),
            stop_after=epochs,
            report=report,
        )
    return score_users(model, score_seqs)
