"""Moment and video-level metrics of the long-video evaluation, on hand-made spans and a stub recommender."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from multimodal_rec.evaluation.long_eval import (
    best_iou,
    format_long,
    long_retrieval,
    moment_recall,
    relevant_spans,
    temporal_iou,
)


@pytest.mark.parametrize(
    ("a", "b", "iou"),
    [
        ((0, 4), (0, 4), 1.0),
        ((0, 4), (2, 6), 2 / 6),  # overlap 2 over union 6
        ((0, 10), (2, 4), 0.2),  # contained
        ((0, 4), (4, 8), 0.0),  # touching
        ((0, 4), (5, 8), 0.0),  # apart
        ((3, 3), (3, 3), 0.0),  # both empty
        ((0, 6), (3, 12), 3 / 12),
    ],
)
def test_temporal_iou_by_hand(a: tuple[float, float], b: tuple[float, float], iou: float) -> None:
    assert math.isclose(temporal_iou(a, b), iou) and math.isclose(temporal_iou(b, a), iou)


def test_best_iou_takes_the_best_matching_span_and_none_is_zero() -> None:
    assert math.isclose(best_iou((10, 14), [(0, 4), (10, 16)]), 4 / 6)
    assert best_iou(None, [(0, 4)]) == 0.0 and best_iou((0, 4), []) == 0.0


def test_moment_recall_thresholds_are_inclusive() -> None:
    r = moment_recall([1.0, 0.5, 0.49, 0.0, 0.7])
    assert r == pytest.approx({"r@1_iou>=0.3": 0.8, "r@1_iou>=0.5": 0.6, "r@1_iou>=0.7": 0.4, "mean_iou": 2.69 / 5})
    assert moment_recall([]) == {}


MOMENTS = pd.DataFrame(
    [
        ("a", 0, 0.0, 5.0, "red", "circle", "left"),
        ("a", 1, 5.0, 10.0, "blue", "square", "up"),
        ("b", 0, 0.0, 6.0, "blue", "square", "up"),
        ("b", 1, 6.0, 12.0, "red", "circle", "left"),
        ("c", 0, 0.0, 4.0, "green", "triangle", "down"),
        ("c", 1, 4.0, 8.0, "red", "circle", "right"),  # same colour and shape, other motion: not relevant
    ],
    columns=["video_id", "part", "start_s", "end_s", "color", "shape", "motion"],
)
RED_LEFT = {"query": "a red circle moving left", "color": "red", "shape": "circle", "motion": "left"}
BLUE_UP = {"query": "a blue square moving up", "color": "blue", "shape": "square", "motion": "up"}
GREEN_UP = {"query": "a green triangle moving up", "color": "green", "shape": "triangle", "motion": "up"}


@dataclass
class _Hit:
    video_id: str
    moment: dict | None


class _StubRec:
    """Serves videos a, b, c; each query's hits are given by hand."""

    def __init__(self, answers: dict[str, list[_Hit]]) -> None:
        self.answers, self.row_of, self.calls = answers, {"a": 0, "b": 1, "c": 2}, []

    def __len__(self) -> int:
        return 3

    def search_batch(self, texts: list[str], k: int, mode: str | None = None) -> list[list[_Hit]]:
        self.calls.append((tuple(texts), k, mode))
        return [self.answers[t][:k] for t in texts]


def _m(s: float, e: float) -> dict:
    return {"start_s": s, "end_s": e, "score": 0.5}


def test_relevant_spans_need_colour_shape_and_motion() -> None:
    assert relevant_spans(MOMENTS, RED_LEFT) == {"a": [(0.0, 5.0)], "b": [(6.0, 12.0)]}
    assert relevant_spans(MOMENTS, GREEN_UP) == {}


def test_long_retrieval_precision_and_moments_by_hand() -> None:
    rec = _StubRec(
        {
            # top hit b with its moment on the matching part shifted by 2 s: IoU 4/8; a also found, moment exact
            RED_LEFT["query"]: [_Hit("b", _m(8, 14)), _Hit("c", _m(4, 8)), _Hit("a", _m(0, 5))],
            # top hit c is not relevant (its moment's times would match b's part): IoU 0 even so
            BLUE_UP["query"]: [_Hit("c", _m(0, 6)), _Hit("b", _m(0, 3)), _Hit("a", None)],
        }
    )
    r = long_retrieval(rec, MOMENTS, [RED_LEFT, BLUE_UP, GREEN_UP], k=5)
    assert rec.calls == [((RED_LEFT["query"], BLUE_UP["query"]), 5, "vector")]  # GREEN_UP: no relevant video
    assert r["queries"] == 2 and r["relevant"] == 2.0
    assert r["p@5"] == pytest.approx((2 / 5 + 2 / 5) / 2)
    assert r["chance_p@5"] == pytest.approx(2 / 3)
    assert r["r@1_iou>=0.3"] == 0.5 and r["r@1_iou>=0.5"] == 0.5 and r["r@1_iou>=0.7"] == 0.0
    assert r["mean_iou"] == pytest.approx(0.5 / 2)
    # given the video: b 0.5, a 1.0 (red); b 3/6 = 0.5, a without a moment 0 (blue)
    assert r["given_video"] == pytest.approx(
        {"pairs": 4, "iou>=0.3": 0.75, "iou>=0.5": 0.75, "iou>=0.7": 0.25, "mean_iou": 2.0 / 4}
    )
    text = "\n".join(format_long({"parts": 6, "vocabulary": r, "paraphrase": {"queries": 0}}))
    assert "vocabulary (2)" in text and "paraphrase" not in text.split("\n", 2)[2]


def test_videos_not_served_are_not_relevant() -> None:
    rec = _StubRec({RED_LEFT["query"]: [_Hit("a", _m(0, 5))]})
    rec.row_of = {"a": 0, "c": 2}  # b was removed
    r = long_retrieval(rec, MOMENTS, [RED_LEFT], k=5)
    assert r["relevant"] == 1.0 and r["p@5"] == pytest.approx(1 / 5) and r["r@1_iou>=0.7"] == 1.0


class _OracleRec:
    """Answers every query with its relevant videos first, each hit's moment the matching part's span moved by
    ``shift`` seconds; text vectors are random (text->video is only smoke-tested here)."""

    def __init__(self, data: Path, shift: float) -> None:
        from multimodal_rec.data.synth import paraphrase_queries, vocab_queries

        self.catalog = pd.read_csv(data / "catalog.csv", dtype={"video_id": str})
        self.video_ids = list(self.catalog["video_id"])
        self.row_of = {v: i for i, v in enumerate(self.video_ids)}
        self.embeddings = np.eye(len(self.video_ids), 4, dtype=np.float32)
        self.moments, self.shift = pd.read_csv(data / "moments.csv", dtype={"video_id": str}), shift
        self.attrs = {q["query"]: q for q in vocab_queries() + paraphrase_queries()}
        self.model = SimpleNamespace(cache_text_features=False, clear_text_cache=lambda: None)

    def __len__(self) -> int:
        return len(self.video_ids)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return np.random.default_rng(0).normal(size=(len(texts), 4)).astype(np.float32)

    def search_batch(self, texts: list[str], k: int, mode: str | None = None) -> list[list[_Hit]]:
        out = []
        for t in texts:
            truth = relevant_spans(self.moments, self.attrs[t])
            hits = [_Hit(v, _m(s + self.shift, e + self.shift)) for v, [(s, e)] in truth.items()]
            hits += [_Hit(v, _m(0, 1)) for v in self.video_ids if v not in truth]
            out.append(hits[:k])
        return out


@pytest.mark.parametrize(("shift", "r_at_1"), [(0.0, 1.0), (10.0, 0.0)])
def test_evaluate_finds_moments_csv_and_scores_an_oracle(tmp_path: Path, shift: float, r_at_1: float) -> None:
    from multimodal_rec.data.synth.long import make_long_world
    from multimodal_rec.evaluation.bundle_eval import evaluate, format_report

    make_long_world(tmp_path, videos=3, parts=2, seed=0)
    res = evaluate(_OracleRec(tmp_path, shift), tmp_path, id_baselines=False)
    assert "semantic_retrieval" not in res and res["user_to_video"] == {} and res["text_to_video"]["queries"] == 6
    lv = res["long_videos"]
    assert lv["parts"] == 6 and lv["vocabulary"]["queries"] == 6 and lv["vocabulary"]["relevant"] == 1.0
    assert lv["vocabulary"]["p@5"] == pytest.approx(1 / 5) and lv["paraphrase"]["queries"] == 18
    assert lv["vocabulary"]["r@1_iou>=0.5"] == r_at_1 and lv["paraphrase"]["r@1_iou>=0.5"] == r_at_1
    assert "long videos (6 parts" in format_report(res)
