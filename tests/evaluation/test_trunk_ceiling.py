"""The trunk ceiling of ``mmrec eval``: the tiny bundle's own text trunk alone (no projection head), checked against
a direct computation written out query by query, and present in the printed table and the JSON."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from multimodal_rec.data.synth import paraphrase_queries, vocab_queries
from multimodal_rec.data.tables import load_dataset
from multimodal_rec.evaluation.trunk_ceiling import format_ceiling, trunk_ceiling

ATTRS = ("color", "shape", "motion")


@pytest.fixture(scope="module")
def rec(bundle: Path):
    from multimodal_rec.serving.recommender import Recommender

    return Recommender.load(bundle)


_SEEN: dict[str, np.ndarray] = {}


def _feature(model, text: str) -> np.ndarray:
    """One text through the trunk alone, on its own (no batch), pooled as the tower does, unit norm."""
    if text in _SEEN:
        return _SEEN[text]
    with torch.inference_mode():
        model.text.trunk.eval()
        x = model.text.forward_features(**model.tokenize([text]))[0].float().numpy()
    _SEEN[text] = x / np.linalg.norm(x)
    return _SEEN[text]


def _direct(model, catalog, captions, queries: list[dict], rows: np.ndarray, method: str, k: int = 5) -> dict:
    """P@k, R@k and MRR with the ranking written out: a video's score is the cosine to its combination's phrase
    (nearest phrase) or its best caption (max caption); ties put the non-relevant videos first."""
    phrase = {tuple(q[a] for a in ATTRS): _feature(model, q["query"]) for q in vocab_queries()}
    caps = {v: [_feature(model, c) for c in g["caption"]] for v, g in captions.groupby("video_id")}
    p = r = rr = 0.0
    n = 0
    for q in queries:
        fq = _feature(model, q["query"])
        videos = []
        for i in rows:
            row = catalog.iloc[i]
            if method == "nearest_phrase":
                score = float(fq @ phrase[tuple(row[a] for a in ATTRS)])
            else:
                score = max(float(fq @ c) for c in caps[row["video_id"]])
            videos.append((score, all(row[a] == q[a] for a in ATTRS)))
        relevant = sum(rel for _, rel in videos)
        if not relevant:
            continue
        ranked = [rel for _, rel in sorted(videos, key=lambda sv: (-sv[0], sv[1]))]  # False (not relevant) first
        p += sum(ranked[:k]) / k
        r += sum(ranked[:k]) / relevant
        rr += 1 / (ranked.index(True) + 1)
        n += 1
    return {"queries": n, "p@5": p / n, "r@5": r / n, "mrr": rr / n}


def test_ceiling_equals_a_direct_computation(rec, world: Path) -> None:
    ds = load_dataset(world)
    every = np.arange(len(rec))
    held_out = every[::3]  # the tiny world holds nothing out (48 videos): a third of the rows stands in for them
    paras = paraphrase_queries()[::7]  # a sample keeps the written-out version fast
    sets = {"vocabulary": vocab_queries(), "paraphrase": paras}
    res = trunk_ceiling(rec.model, rec.catalog, ds.captions, {"": held_out, "_whole": every}, sets, vocab_queries())
    assert res["trunk"] == "fine-tuned"  # the tiny preset trains its 1-layer trunk (the small preset's is frozen)
    assert res["phrases"] == 126 and res["captions"] == len(ds.captions)
    for name, qs in sets.items():
        for method in ("nearest_phrase", "max_caption"):
            for rows, suffix in ((every, "_whole"), (held_out, "")):
                want = _direct(rec.model, rec.catalog, ds.captions, qs, rows, method)
                got = res[method][f"{name}{suffix}"]
                assert {m: got[m] for m in want} == pytest.approx(want, abs=1e-9), (name, method, suffix)
    # a vocabulary query is its own phrase: its combination's videos come first
    assert res["nearest_phrase"]["vocabulary_whole"]["mrr"] == 1.0


def test_evaluate_prints_and_returns_the_ceiling(rec, world: Path) -> None:
    from multimodal_rec.evaluation.bundle_eval import evaluate, format_report

    res = evaluate(rec, world, seeds=1, id_baselines=False)
    ceiling = res["trunk_ceiling"]
    keys = {"vocabulary", "paraphrase", "vocabulary_whole_catalog", "paraphrase_whole_catalog"}
    assert set(ceiling["max_caption"]) == keys and set(ceiling["nearest_phrase"]) == keys
    text = format_report(res)
    assert "trunk ceiling" in text and "nearest phrase (trunk)" in text and "system (vector search)" in text
    line = next(ln for ln in text.splitlines() if "nearest phrase (trunk)" in ln)
    assert f"{ceiling['nearest_phrase']['paraphrase_whole_catalog']['p@5']:.3f}" in line
    sys_line = next(ln for ln in text.splitlines() if "system (vector search)" in ln)
    assert f"{res['semantic_retrieval']['paraphrase_whole_catalog']['p@5']:.3f}" in sys_line
    assert format_ceiling(ceiling)[0].startswith("trunk ceiling")  # without the system's figures too
