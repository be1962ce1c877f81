"""Known-item title queries and MRR@10, the per-mode semantic P@5 and the content/text ablation, on stubs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from multimodal_rec.evaluation.bundle_eval import ablation, format_report
from multimodal_rec.evaluation.known_item import (
    KINDS,
    known_item_mrr,
    known_item_queries,
    mrr_by_kind,
    title_name,
    with_typo,
)
from multimodal_rec.evaluation.metrics import precision_at_k, reciprocal_rank
from multimodal_rec.evaluation.text_search import semantic_p_at_k, supported_modes

CATALOG = pd.DataFrame(
    {
        "video_id": ["v0", "v1", "v2"],
        "title": ["Tavo Rimelu: Red circle moving left", "Kizori Vokruva: Blue square growing", ""],
        "color": ["red", "blue", "red"],
        "shape": ["circle", "square", "circle"],
        "motion": ["left", "growing", "left"],
    }
)


def test_reciprocal_rank_and_precision_by_hand() -> None:
    assert reciprocal_rank(["a", "b", "c"], "a", 10) == 1.0
    assert reciprocal_rank(["a", "b", "c"], "c", 10) == pytest.approx(1 / 3)
    assert reciprocal_rank(["a", "b", "c"], "c", 2) == 0.0  # beyond k: MRR@k counts nothing
    assert reciprocal_rank([], "c", 10) == 0.0
    assert precision_at_k(["a", "x", "b"], {"a", "b", "z"}, 5) == pytest.approx(2 / 5)  # short list: still / k
    assert precision_at_k(["a", "x", "b"], {"a", "b"}, 2) == 0.5


def test_title_name() -> None:
    assert title_name("Tavo Rimelu: Red circle moving left") == "Tavo Rimelu"
    assert title_name("Toy Story trailer") == "Toy"  # no name part: the first half of the words
    assert title_name("Alien") == "Alien"


def test_typo_substitutes_one_letter_keeps_case_and_avoids_other_words() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        t = with_typo("Rimelu", rng, avoid={"rimelu"})
        diff = [i for i, (a, b) in enumerate(zip(t, "Rimelu", strict=True)) if a != b]
        assert len(t) == 6 and len(diff) == 1 and diff[0] > 0 and t[0] == "R" and t[1:].islower()
    # every one-letter change of "ab?" but one is forbidden: the typo is the one left
    avoid = {f"ab{c}" for c in "abcdefghijklmnopqrstuvwxyz"} | {f"a{c}c" for c in "abcdefghijklmnopqrstuvwxyz"}
    assert with_typo("abc", np.random.default_rng(1), avoid - {"abz"}) == "abz"


def test_known_item_queries_four_kinds_per_titled_video() -> None:
    q = known_item_queries(CATALOG)
    assert [x["kind"] for x in q] == list(KINDS) * 2 and {x["video_id"] for x in q} == {"v0", "v1"}  # v2: no title
    by = {x["kind"]: x["query"] for x in q if x["video_id"] == "v0"}
    assert by["exact"] == "Tavo Rimelu: Red circle moving left" and by["lowercase"] == by["exact"].lower()
    assert by["partial"] == "Tavo Rimelu"
    assert len(by["typo"]) == len(by["exact"])
    assert sum(a != b for a, b in zip(by["typo"], by["exact"], strict=True)) == 1
    assert by["typo"].split(":")[1] == by["exact"].split(":")[1]  # the typo is in the name
    assert known_item_queries(CATALOG) == q  # seeded
    big = pd.DataFrame({"video_id": [f"v{i}" for i in range(30)], "title": [f"Na{i} Me: x" for i in range(30)]})
    sampled = known_item_queries(big, sample=10, seed=3)
    assert len(sampled) == 40 and sampled == known_item_queries(big, sample=10, seed=3)
    assert len(known_item_queries(big, sample=None)) == 120


def test_mrr_by_kind_by_hand() -> None:
    q = [{"kind": k, "query": "", "video_id": "v0"} for k in KINDS]
    ranked = [["v0"], ["v1", "v0"], ["v1"] * 10 + ["v0"], ["v2", "v1", "v0"]]
    r = mrr_by_kind(q, ranked)
    assert r == pytest.approx({"queries": 4, "exact": 1.0, "lowercase": 0.5, "typo": 0.0, "partial": 1 / 3,
                               "overall": (1 + 0.5 + 1 / 3) / 4})  # fmt: skip


@dataclass
class _Hit:
    video_id: str


class _StubRec:
    """Answers a query by the catalog rows sorted by how many of the query's lowercase words their title shares
    (a toy lexical search), ties by row; records the modes asked for."""

    def __init__(self, catalog: pd.DataFrame) -> None:
        self.catalog = catalog
        self.row_of = {v: i for i, v in enumerate(catalog["video_id"])}
        self.modes: list[str | None] = []

    def search(self, text: str, k: int = 10, *, mode: str | None = None) -> list[_Hit]:
        return self.search_batch([text], k, mode=mode)[0]

    def search_batch(self, texts: list[str], k: int = 10, *, mode: str | None = None) -> list[list[_Hit]]:
        self.modes.append(mode)
        out = []
        for t in texts:
            words = set(t.lower().replace(":", "").split())
            shared = [-len(words & set(str(x).lower().replace(":", "").split())) for x in self.catalog["title"]]
            out.append([_Hit(self.catalog["video_id"].iloc[i]) for i in np.argsort(shared, kind="stable")[:k]])
        return out


def test_known_item_mrr_through_search() -> None:
    rec = _StubRec(CATALOG)
    r = known_item_mrr(rec, CATALOG, mode="lexical")
    assert set(rec.modes) == {"lexical"} and r["queries"] == 8
    # v0's queries all find v0 first; v1's exact, lowercase and partial find v1 first, its typo still shares the
    # other name word and the rest of the title, so v1 first too
    assert r["exact"] == r["lowercase"] == r["partial"] == 1.0 and r["overall"] == 1.0
    rec.row_of = {"v1": 1, "v2": 2}  # v0 not served: its queries are left out
    assert known_item_mrr(rec, CATALOG, mode=None)["queries"] == 4


def test_semantic_p_at_k_per_mode_and_supported_modes() -> None:
    rec = _StubRec(CATALOG)
    q = [
        {"query": "red circle moving left", "color": "red", "shape": "circle", "motion": "left"},
        {"query": "green", "color": "green", "shape": "circle", "motion": "left"},  # no relevant video: skipped
    ]
    r = semantic_p_at_k(rec, CATALOG, q, mode="hybrid", k=2)
    # hits: v0 (shares 4 words), then v1 and v2 share none (ties by row: v1); relevant v0, v2 -> 1 of 2
    assert r == {"queries": 1, "p@2": 0.5} and rec.modes == ["hybrid"]
    assert supported_modes(rec) == ("vector", "lexical", "hybrid")

    class _Old(_StubRec):
        def search(self, text: str, k: int = 10) -> list[_Hit]:  # serving before issue 14: no modes
            return []

    assert supported_modes(_Old(CATALOG)) == ()


class _VecRec:
    """Three videos; item vectors rank the red one first, content vectors the blue one, text vectors nothing."""

    def __init__(self, with_parts: bool) -> None:
        self.catalog = CATALOG
        self.embeddings = np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
        self.content = np.array([[0, 1], [1, 0], [0.8, 0.6]], dtype=np.float32) if with_parts else None
        self.text = np.zeros((3, 2), dtype=np.float32) if with_parts else None

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return np.array([[1, 0]] * len(texts), dtype=np.float32)


def test_ablation_scores_with_content_and_text_vectors() -> None:
    q = [{"query": "red", "color": "red", "shape": "circle", "motion": "left"}]  # relevant: v0, v2
    assert ablation(_VecRec(False), np.arange(3), q, q) == {}
    r = ablation(_VecRec(True), np.arange(3), q, q)
    assert set(r) == {"item", "content_only", "text_only"}
    assert r["item"]["vocabulary"]["mrr"] == 1.0  # v0 first
    assert r["content_only"]["vocabulary"]["mrr"] == 0.5  # v1 first, then v2
    assert r["text_only"]["vocabulary"]["mrr"] == 0.5  # all tied: ties count against, the blue one goes first
    text = format_report({"videos": 3, "held_out_videos": 3, "ablation": r})
    assert "content_only" in text and "text_only" in text and math.isfinite(r["item"]["vocabulary"]["p@5"])
