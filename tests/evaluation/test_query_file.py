"""``mmrec eval --queries``: a platform's judged queries -> P@K, R@K, nDCG@K, MRR, checked against hand computations
(a stub search with fixed rankings, and the tiny bundle's own search), and every bad file refused in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from multimodal_rec.errors import UserError
from multimodal_rec.evaluation.query_file import evaluate_queries, format_queries, read_queries

IDS = [f"v{i}" for i in range(6)]
CATALOG = pd.DataFrame(
    {
        "video_id": IDS,
        "color": ["red", "red", "blue", "blue", "red", "green"],
        "shape": ["circle", "square", "circle", "square", "circle", "circle"],
    }
)
RANKINGS = {"a": IDS, "b": IDS[::-1], "c": IDS, "red circles": ["v2", "v0", "v1", "v4", "v3", "v5"]}


class _StubSearch:
    """Six videos; each query returns its fixed ranking from RANKINGS (cut to k); records the mode asked for."""

    search_mode = "hybrid"

    def __init__(self) -> None:
        self.catalog = CATALOG
        self.row_of = {v: i for i, v in enumerate(IDS)}
        self.modes: list[str | None] = []

    def __len__(self) -> int:
        return len(IDS)

    def search_batch(self, texts: list[str], k: int, mode: str | None = None) -> list[list[SimpleNamespace]]:
        self.modes.append(mode)
        return [[SimpleNamespace(video_id=v) for v in RANKINGS[t][:k]] for t in texts]


def _csv(tmp_path: Path, text: str, name: str = "q.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_metrics_equal_a_hand_computation(tmp_path: Path) -> None:
    # a: relevant v1 (rank 2) and v4 (rank 5); b: relevant v5 (rank 1), plus a row for an unknown id (dropped);
    # c: only an unknown id, so the query is left out.
    f = _csv(tmp_path, "\ufeffquery,video_id\na,v1\na,v4\nb,v5\nb,v99\nc,v42\n")  # with a BOM, as Excel writes
    rec = _StubSearch()
    res = evaluate_queries(rec, f, ks=(2, 5), mode="lexical")
    assert rec.modes == ["lexical"] and res["mode"] == "lexical"
    assert res["queries"] == 2 and res["depth"] == 6
    assert res["dropped"] == {"unknown_video_ids": 2, "queries_without_relevant": 1}
    d = [1 / math.log2(i + 1) for i in range(1, 7)]  # discount of positions 1..6
    expect = {
        "p@2": (1 / 2 + 1 / 2) / 2,
        "r@2": (1 / 2 + 1) / 2,
        "ndcg@2": (d[1] / (d[0] + d[1]) + 1.0) / 2,
        "p@5": (2 / 5 + 1 / 5) / 2,
        "r@5": (1 + 1) / 2,
        "ndcg@5": ((d[1] + d[4]) / (d[0] + d[1]) + 1.0) / 2,
        "mrr": (1 / 2 + 1) / 2,
    }
    assert res["metrics"] == pytest.approx(expect)
    assert [r["query"] for r in res["per_query"]] == ["a", "b"]
    assert res["per_query"][0]["p@5"] == pytest.approx(2 / 5)
    text = format_queries(res)
    assert "P@2" in text and "nDCG@5" in text and f"{expect['mrr']:.3f}" in text and "dropped" in text


def test_a_relevant_video_missing_from_the_hits_scores_zero() -> None:
    """A ranking shorter than the catalog (lexical search lists only videos sharing a word): MRR 0, not 1."""

    class Short(_StubSearch):
        def search_batch(self, texts: list[str], k: int, mode: str | None = None) -> list[list[SimpleNamespace]]:
            return [[SimpleNamespace(video_id=v) for v in IDS[:3]] for _ in texts]

    res = evaluate_queries(Short(), pd.DataFrame({"query": ["a"], "video_id": ["v5"]}), ks=(1, 10))
    assert set(res["metrics"]) == {"p@1", "r@1", "ndcg@1", "p@10", "r@10", "ndcg@10", "mrr"}
    assert set(res["metrics"].values()) == {0.0}


def test_attribute_columns_match_the_catalog() -> None:
    df = pd.DataFrame(
        {
            "query": ["red circles", "red circles", "blue things", "purple"],
            "color": ["red", "green", "blue", "purple"],
            "shape": ["circle", "circle", "", ""],  # an empty cell constrains nothing
        }
    )
    qs = read_queries(df, CATALOG, IDS)
    assert qs.kind == "attributes" and qs.columns == ["color", "shape"]
    assert qs.queries == ["red circles", "blue things"]  # "purple": no such video, left out
    assert qs.relevant == [{"v0", "v4", "v5"}, {"v2", "v3"}]  # rows of one query: any of them
    assert qs.without_relevant == ["purple"]
    # only served videos count: v4 removed from the bundle
    assert read_queries(df, CATALOG, [v for v in IDS if v != "v4"]).relevant[0] == {"v0", "v5"}
    res = evaluate_queries(_StubSearch(), df.iloc[:2], ks=(3,))  # ranking v2 v0 v1 v4: one of three in the top 3
    assert res["metrics"]["p@3"] == pytest.approx(1 / 3) and res["metrics"]["mrr"] == pytest.approx(1 / 2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "does not exist"),
        ("", "is empty"),
        ("query,video_id\n", "has no rows"),
        ("text,video_id\na,v1\n", "no 'query' column"),
        ("query\na\n", "needs a video_id column or attribute columns"),
        ("query,video_id,color\na,v1,red\n", "video_id column and other columns (color)"),
        ("query,colour,shape\na,red,circle\n", "attribute column(s) colour not in the catalog"),
        ("query,video_id\na,x1\nb,x2\n", "none of the 2 video ids"),
        ("query,video_id\na,v1\n,v2\n", "line 3: empty query"),
        ("query,video_id\na,\n", "line 2: empty video_id"),
        ("query,color,shape\na,red,\nb,,\n", "line 3: no attribute value"),
        ("query,color\npurple things,purple\n", "no query in"),
    ],
)
def test_bad_files_are_refused_in_one_line(tmp_path: Path, text: str | None, message: str) -> None:
    f = tmp_path / "missing.csv" if text is None else _csv(tmp_path, text)
    with pytest.raises(UserError) as e:
        evaluate_queries(_StubSearch(), f)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_ks_are_refused(tmp_path: Path) -> None:
    f = _csv(tmp_path, "query,video_id\na,v1\n")
    for ks in ((), (0,), (1001,)):
        with pytest.raises(UserError, match="K"):
            evaluate_queries(_StubSearch(), f, ks=ks)


# --- the tiny bundle, through the real search and the CLI ---------------------------------------------------------
@pytest.fixture(scope="module")
def rec(bundle: Path):
    from multimodal_rec.serving.recommender import Recommender

    return Recommender.load(bundle)


def _by_hand(rec, queries: list[str], relevant: list[set[str]], k: int) -> dict[str, float]:
    """P@k, R@k, nDCG@k and MRR from the search's own hit lists, written out with no numpy."""
    p = r = ndcg = mrr = 0.0
    for q, rel in zip(queries, relevant, strict=True):
        ranked = [h.video_id for h in rec.search(q, k=min(1000, len(rec)), mode="vector")]
        gains = [1.0 if v in rel else 0.0 for v in ranked]
        p += sum(gains[:k]) / k
        r += sum(gains[:k]) / len(rel)
        dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains[:k]))
        ndcg += dcg / sum(1 / math.log2(i + 2) for i in range(min(k, len(rel))))
        mrr += next((1 / (i + 1) for i, g in enumerate(gains) if g), 0.0)
    n = len(queries)
    return {f"p@{k}": p / n, f"r@{k}": r / n, f"ndcg@{k}": ndcg / n, "mrr": mrr / n}


def test_tiny_bundle_attribute_queries_equal_a_hand_computation(rec, tmp_path: Path) -> None:
    from multimodal_rec.data.synth import vocab_queries

    cat = rec.catalog
    combos = {tuple(r) for r in cat[["color", "shape", "motion"]].astype(str).to_numpy()}
    qs = [q for q in vocab_queries() if (q["color"], q["shape"], q["motion"]) in combos][:8]
    f = tmp_path / "attrs.csv"
    pd.DataFrame(qs)[["query", "color", "shape", "motion"]].to_csv(f, index=False)
    res = evaluate_queries(rec, f, ks=(5,), mode="vector")
    relevant = []
    for q in qs:
        hit = (cat["color"] == q["color"]) & (cat["shape"] == q["shape"]) & (cat["motion"] == q["motion"])
        relevant.append(set(cat["video_id"][hit]))
    assert res["queries"] == len(qs) and res["kind"] == "attributes"
    assert res["metrics"] == pytest.approx(_by_hand(rec, [q["query"] for q in qs], relevant, 5))


def test_cli_eval_queries_json_and_errors(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from multimodal_rec.cli import main

    ids = pd.read_parquet(bundle / "catalog.parquet")["video_id"].astype(str).tolist()
    f = _csv(tmp_path, f"query,video_id\na red circle,{ids[0]}\na red circle,{ids[1]}\nblue squares,{ids[2]}\n")
    assert main(["eval", "--queries", str(f), "--bundle", str(bundle), "--k", "1", "3", "--json", "--quiet"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["queries"] == 2 and res["ks"] == [1, 3] and set(res["metrics"]) >= {"p@1", "r@3", "ndcg@3", "mrr"}
    assert np.isfinite(list(res["metrics"].values())).all()
    assert main(["eval", "--queries", str(f), "--bundle", str(bundle), "--mode", "lexical", "--quiet"]) == 0
    assert "mode lexical" in capsys.readouterr().out
    syn = _csv(tmp_path, "red, crimson\n", "synonyms.txt")
    args = ["eval", "--queries", str(f), "--bundle", str(bundle), "--synonyms", str(syn), "--json", "--quiet"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["synonyms"]["rules"] == 1  # recorded with the figures
    missing = tmp_path / "nope.csv"
    assert main(["eval", "--queries", str(missing), "--bundle", str(bundle), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and len(err.splitlines()) == 1
    assert main(["eval", "--queries", str(f), "--quiet"]) == 2
    assert "needs --bundle" in capsys.readouterr().err
    for flag in (["--k", "5"], ["--synonyms", str(syn)]):  # a --data evaluation never reads a synonyms file
        assert main(["eval", "--bundle", str(bundle), "--data", str(tmp_path), *flag, "--quiet"]) == 2
        assert "apply to --queries" in capsys.readouterr().err


def test_a_query_file_of_the_paraphrases_reproduces_the_semantic_table(rec, tmp_path: Path) -> None:
    """What the hidden query sets of issue 16 rely on: the synthetic paraphrases written as a query file and run by
    ``eval --queries --mode vector`` give the semantic table's whole-catalog figures."""
    from multimodal_rec.data.synth import paraphrase_queries
    from multimodal_rec.evaluation.bundle_eval import semantic_retrieval

    qs = paraphrase_queries()
    f = tmp_path / "para.csv"
    pd.DataFrame(qs)[["query", "color", "shape", "motion"]].to_csv(f, index=False)
    got = evaluate_queries(rec, f, ks=(5,), mode="vector")
    want = semantic_retrieval(rec, qs, np.arange(len(rec)))
    assert got["queries"] == want["queries"]
    assert {m: got["metrics"][m] for m in ("p@5", "r@5", "ndcg@5", "mrr")} == pytest.approx(
        {m: want[m] for m in ("p@5", "r@5", "ndcg@5", "mrr")}, abs=1e-6
    )
