"""Lexical and hybrid search: a video found first by its made-up title, filters and removals in every mode, vector
mode unchanged, reciprocal rank fusion, catalogs without text, and the modes over HTTP and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hybrid_check import assert_hybrid_as_in_full

from multimodal_rec import Recommender, UserError
from multimodal_rec.bundle import load_bundle
from multimodal_rec.cli import main
from multimodal_rec.index.search import exact_search
from multimodal_rec.serving.fusion import candidates, fuse_hits, reciprocal_rank_fusion
from multimodal_rec.serving.lexical import BM25Index, row_tokens, text_columns, tokenize
from multimodal_rec.serving.results import Hit

MODES = ("vector", "lexical", "hybrid")
# Made-up names (no caption word, no stop word): "<First> <Second>: <the source clip's title>", as the synthetic
# world titles its videos.
NAMES = [("Zorblat", "Quenix"), ("Mirvane", "Todrel"), ("Kelbish", "Ostrun"), ("Pavinor", "Glesk")]
QUERIES = ["a red circle moving left", "blue squares", "a green ball moving up", "white triangles", "yellow"]


def _ids(hits: list[Hit]) -> list[str]:
    return [h.video_id for h in hits]


def _add_titled(rec: Recommender) -> list[str]:
    """Add one video per name: a copy of a served clip's row with a made-up title; its vector mixes the clip's
    vector and its title's text vector in equal parts, as the encoder's item vectors do (``text_weight`` 0.5)."""
    src = rec.catalog.iloc[[0, 5, 10, 15]].reset_index(drop=True)
    df = src.drop(columns=["path"], errors="ignore").copy()
    df["video_id"] = [f"named{i}" for i in range(len(NAMES))]
    df["title"] = [f"{a} {b}: {t}" for (a, b), t in zip(NAMES, src["title"], strict=True)]
    df = df[[c for c in df.columns if c in rec.catalog.columns and c != "popularity"]]
    xb = np.asarray(rec.embeddings[[0, 5, 10, 15]]) + rec.encode_queries(list(df["title"]))
    rec.add_videos(df, embeddings=xb / np.linalg.norm(xb, axis=1, keepdims=True))
    return list(df["video_id"])


@pytest.fixture(scope="module")
def rec(bundle: Path) -> Recommender:
    r = Recommender.load(bundle)
    _add_titled(r)
    return r


@pytest.fixture
def fresh(bundle: Path) -> Recommender:
    """A titled Recommender of its own, for tests that change the catalog."""
    r = Recommender.load(bundle)
    _add_titled(r)
    return r


def _variants(i: int, title: str) -> dict[str, str]:
    """The ways a user names video ``i``: its exact title, lowercased, one word of its name, one typo in one of
    the name's two words."""
    a, b = NAMES[i]
    return {"exact": title, "lower": title.lower(), "word": b.lower(), "typo": f"{a.lower()} {b.lower()[:-1]}"}


# --- the titled video first ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["exact", "lower", "word", "typo"])
@pytest.mark.parametrize("mode", ["lexical", "hybrid"])
def test_a_title_finds_its_video_first(rec: Recommender, mode: str, variant: str) -> None:
    for i in range(len(NAMES)):
        vid = f"named{i}"
        query = _variants(i, rec.catalog["title"].iloc[rec.row_of[vid]])[variant]
        hits = rec.search(query, k=5, mode=mode)
        assert hits and hits[0].video_id == vid, (mode, query, _ids(hits))


def test_default_mode_is_hybrid_on_a_catalog_with_text(rec: Recommender) -> None:
    assert rec.search_mode == "hybrid"
    info = rec.info()
    assert info["search_mode"] == "hybrid" and info["text_columns"] == ["title"]
    default = rec.search("zorblat quenix", k=7)
    hybrid = rec.search("zorblat quenix", k=7, mode="hybrid")
    assert _ids(default) == _ids(hybrid) and [h.score for h in default] == [h.score for h in hybrid]
    top = default[0]
    assert top.scores is not None and top.scores["lexical"] > 0 and top.to_dict()["scores"] == pytest.approx(top.scores)
    assert rec.search("zorblat quenix", k=3, mode="vector")[0].scores is None
    assert "scores" not in rec.search("zorblat", k=3, mode="vector")[0].to_dict()


def test_lexical_mode_is_exact_bm25_over_the_passing_rows(fresh: Recommender) -> None:
    fresh.remove_videos(["named1", fresh.video_ids[3]])
    index = BM25Index(row_tokens(fresh.catalog, fresh.text_columns))
    alive = np.zeros(len(fresh.catalog), dtype=bool)
    alive[list(fresh.row_of.values())] = True
    for query, filters in [("red circle moving", None), ("blue left todrel", {"shape": ["square", "circle"]})]:
        s = index.scores(query)
        ok = alive & (s > 0)
        if filters:
            ok &= fresh.catalog["shape"].isin(filters["shape"]).to_numpy()
        rows = np.flatnonzero(ok)
        rows = rows[np.lexsort((rows, -s[rows]))][:6]
        hits = fresh.search(query, k=6, filters=filters, mode="lexical")
        assert _ids(hits) == [fresh.video_ids[r] for r in rows] and len(hits) == min(6, ok.sum())
        np.testing.assert_allclose([h.score for h in hits], s[rows], rtol=1e-6)


# --- filters and removals hold in every mode -------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_filters_hold_in_every_mode(rec: Recommender, mode: str) -> None:
    cat = rec.catalog
    color = cat["color"].iloc[rec.row_of["named0"]]
    title = cat["title"].iloc[rec.row_of["named0"]]
    hits = rec.search(title, k=5, filters={"color": color}, mode=mode)
    assert hits[0].video_id == "named0" or mode == "vector"
    assert all(h.metadata["color"] == color for h in hits)
    other_color = {"red": "blue"}.get(color, "red")
    other = rec.search(title, k=len(rec), filters={"color": other_color}, mode=mode)
    assert "named0" not in _ids(other) and all(h.metadata["color"] == other_color for h in other)
    if mode != "lexical":  # every passing video is a vector candidate
        assert len(other) == (cat["color"] == other_color).sum()
    # k hits whenever at least k videos pass (lexical: pass and share a word with the query)
    words = cat["title"].map(lambda t: "circle" in tokenize(t))
    passing = (cat["shape"] == "circle") & (words if mode == "lexical" else True)
    assert passing.sum() >= 4
    hits = rec.search("red circle", k=4, filters={"shape": "circle"}, mode=mode)
    assert len(hits) == 4 and all(h.metadata["shape"] == "circle" for h in hits)
    assert [h.rank for h in hits] == [1, 2, 3, 4]


@pytest.mark.parametrize("mode", MODES)
def test_a_removed_video_never_appears(fresh: Recommender, mode: str) -> None:
    title = fresh.catalog["title"].iloc[fresh.row_of["named2"]]
    assert "named2" in _ids(fresh.search(title, k=10, mode=mode))
    fresh.remove_videos(["named2"])
    for query in (title, "kelbish", "kelbish ostrun"):
        hits = fresh.search(query, k=len(fresh), mode=mode)
        assert "named2" not in _ids(hits)
    if mode != "lexical":  # every served video is a vector candidate: k hits still come back
        assert len(fresh.search(title, k=len(fresh), mode=mode)) == len(fresh)


def test_the_lexical_index_follows_adds_and_a_compacting_save(fresh: Recommender, tmp_path: Path) -> None:
    extra = fresh.catalog.iloc[[1]].drop(columns=["path", "popularity"], errors="ignore").copy()
    extra["video_id"], extra["title"] = "late", "Brimwold Yestra: late arrival"
    fresh.add_videos(extra, embeddings=np.asarray(fresh.embeddings[[1]]))
    assert _ids(fresh.search("brimwold", k=3, mode="lexical")) == ["late"]
    fresh.remove_videos([fresh.video_ids[0], "named0"])
    fresh.save(tmp_path / "b")  # compaction: rows renumbered
    loaded = Recommender.load(tmp_path / "b")
    for mode in ("lexical", "hybrid"):  # the saved bundle answers exactly as the compacted Recommender
        got = [
            [[(h.video_id, h.score, h.scores) for h in hits] for hits in r.search_batch(QUERIES, 9, mode=mode)]
            for r in (fresh, loaded)
        ]
        assert got[0] == got[1]
    for r in (fresh, loaded):
        hit = r.search("brimwold yestra", k=3, mode="lexical")[0]
        assert hit.video_id == "late" and hit.metadata["title"] == "Brimwold Yestra: late arrival"
        assert _ids(r.search("mirvane", k=3, mode="hybrid"))[0] == "named1"
        assert "named0" not in _ids(r.search("zorblat quenix", k=len(r), mode="hybrid"))


# --- vector mode is today's search ---------------------------------------------------------------------------------
def test_vector_mode_is_exactly_the_vector_search(rec: Recommender) -> None:
    for q in QUERIES:
        hits = rec.search(q, k=8, mode="vector")
        (same,) = rec.search_vectors(rec.text_queries([q]), 8)  # the unchanged vector path
        assert _ids(hits) == _ids(same) and [h.score for h in hits] == [h.score for h in same]
        D, I = exact_search(np.asarray(rec.embeddings), rec.encode_queries([q]), 8)  # noqa: E741
        assert _ids(hits) == [rec.video_ids[i] for i in I[0]]
        np.testing.assert_allclose([h.score for h in hits], D[0], atol=1e-4)
    f = {"shape": "circle"}
    batch = rec.search_batch(QUERIES, k=3, filters=f, min_score=0.0, mode="vector")
    assert [_ids(b) for b in batch] == [_ids(rec.search(q, 3, f, min_score=0.0, mode="vector")) for q in QUERIES]
    same = rec.search_vectors(rec.text_queries(QUERIES), 3, (), f)
    assert [_ids(b) for b in batch] == [[h.video_id for h in b if h.score >= 0.0] for b in same]


def test_min_score_in_hybrid_trims_only_the_vector_candidates(rec: Recommender) -> None:
    hits = rec.search("zorblat quenix", k=5, mode="hybrid", min_score=2.0)  # above any cosine
    assert _ids(hits) == ["named0"] and hits[0].scores is not None
    assert hits[0].scores["vector"] is None and hits[0].scores["lexical"] > 0
    assert rec.search("zorblat", k=5, mode="lexical", min_score=1e6) == []  # lexical: compares BM25


def test_hybrid_completes_only_the_fused_hits_as_in_full(rec: Recommender) -> None:
    assert_hybrid_as_in_full(rec, [*QUERIES, "zorblat quenix", "mirvane circle"])


def test_a_video_removed_before_completion_is_dropped(fresh: Recommender) -> None:
    """A removal between ranking and completion: the hit is dropped and the ranks after it close up."""
    from multimodal_rec.serving.fusion import fuse_hits

    state = fresh._state
    vector = state.search_text(fresh.text_queries(["zorblat quenix"]), 5, bare=True)[0]
    fused = fuse_hits(vector, [], 5)
    assert all(h.metadata == {} and h.moment is None for h in fused)  # bare: nothing built yet
    fresh.remove_videos([fused[1].video_id])
    (done,) = state.completed([fused], fresh.text_queries(["zorblat quenix"]))
    assert [h.video_id for h in done] == [h.video_id for h in fused if h is not fused[1]]
    assert [h.rank for h in done] == [1, 2, 3, 4] and all(h.metadata and h.moment for h in done)


# --- reciprocal rank fusion -------------------------------------------------------------------------------------------
def test_rrf_scores_and_order() -> None:
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "a", "d"]], rrf_k=60)
    scores = dict(fused)
    assert scores["a"] == pytest.approx(1 / 61 + 1 / 62) and scores["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert scores["b"] == pytest.approx(1 / 62) and scores["d"] == pytest.approx(1 / 63)
    assert [x for x, _ in fused] == ["a", "c", "b", "d"]


def test_rrf_ties_one_empty_list_and_ids_in_one_list() -> None:
    # "x" (only list 0) and "y" (only list 1) tie at rank 1: the earlier list wins; then by best rank
    assert reciprocal_rank_fusion([["x", "p"], ["y", "q"]]) == [
        ("x", pytest.approx(1 / 61)),
        ("y", pytest.approx(1 / 61)),
        ("p", pytest.approx(1 / 62)),
        ("q", pytest.approx(1 / 62)),
    ]
    assert [x for x, _ in reciprocal_rank_fusion([["y", "q"], ["x", "p"]])] == ["y", "x", "q", "p"]
    # equal sums: a (ranks 1 and 3) and b (ranks 3 and 1): best rank ties, the list holding it decides
    assert [x for x, _ in reciprocal_rank_fusion([["a", "m", "b"], ["b", "n", "a"]])][:2] == ["a", "b"]
    # one list empty: the other's order, scores 1 / (k + rank)
    assert reciprocal_rank_fusion([[], ["a", "b"]], rrf_k=10) == [("a", 1 / 11), ("b", 1 / 12)]
    assert reciprocal_rank_fusion([[], []]) == []


def test_fuse_hits_keeps_both_scores_and_the_vector_hit() -> None:
    vector = [Hit("v1", 0.9, 1, {"t": 1}), Hit("both", 0.8, 2, {"t": 2})]
    lexical = [Hit("both", 7.0, 1, {"t": 2}), Hit("w1", 3.0, 2, {"t": 3})]
    fused = fuse_hits(vector, lexical, k=2)
    assert _ids(fused) == ["both", "v1"] and [h.rank for h in fused] == [1, 2]
    assert fused[0].scores == {"vector": 0.8, "lexical": 7.0} and fused[0].score == pytest.approx(1 / 62 + 1 / 61)
    assert fused[1].scores == {"vector": 0.9, "lexical": None} and fused[1].metadata == {"t": 1}
    assert fuse_hits([], lexical, k=5)[1].scores == {"vector": None, "lexical": 3.0}
    assert fuse_hits([], [], k=5) == [] and candidates(1) == 50 and candidates(30) == 120


def test_tokenize() -> None:
    words = ["zorblat", "quenix", "red", "circle", "moving", "up"]
    assert tokenize("The Zorblat-Quenix: a RED circle, moving up!") == words
    assert tokenize("of the and") == [] and tokenize("Ça va, naïve café 42") == ["ça", "va", "naïve", "café", "42"]


# --- catalogs without text -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def no_text(bundle: Path) -> Recommender:
    b = load_bundle(bundle)
    catalog = b.catalog.drop(columns=["title"])
    return Recommender(b.path, b.model, b.manifest, catalog, b.embeddings, b.index, b.cfg, True, b.sources)


def test_a_catalog_without_text_searches_by_vector(no_text: Recommender, rec: Recommender) -> None:
    assert no_text.search_mode == "vector" and list(no_text.text_columns) == []
    assert no_text.info()["search_mode"] == "vector"
    for q in QUERIES[:2]:
        default, vector = no_text.search(q, k=5), no_text.search(q, k=5, mode="vector")
        assert _ids(default) == _ids(vector) and [h.score for h in default] == [h.score for h in vector]
        assert _ids(vector) == _ids(rec.search(q, k=5, filters={"video_id": no_text.video_ids}, mode="vector"))
    for mode in ("lexical", "hybrid"):
        with pytest.raises(UserError, match=f"search mode '{mode}' needs catalog text") as e:
            no_text.search("red", mode=mode)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="unknown search mode 'fuzzy'"):
        no_text.search("red", mode="fuzzy")


def test_the_manifest_names_the_text_columns(bundle: Path) -> None:
    b = load_bundle(bundle)
    assert text_columns(b.manifest, b.catalog) == ["title"]
    elsewhere = {**b.manifest, "encode": {"text_columns": ["description", "tags"]}}
    assert text_columns(elsewhere, b.catalog) == []
    r = Recommender(b.path, b.model, elsewhere, b.catalog, b.embeddings, b.index, b.cfg, True, b.sources)
    assert r.search_mode == "vector"
    with pytest.raises(UserError, match="text columns: none of title"):
        r.search("red", mode="lexical")


# --- HTTP and the command line ---------------------------------------------------------------------------------------
def test_http_modes(rec: Recommender, no_text: Recommender) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from multimodal_rec.serving.http import create_app

    with TestClient(create_app(rec)) as c:
        for mode in MODES:
            r = c.post("/search", json={"query": "zorblat quenix", "k": 3, "mode": mode})
            assert r.status_code == 200, r.text
            hits = r.json()["hits"]
            assert len(hits) >= 1 and ("scores" in hits[0]) == (mode == "hybrid")
            if mode != "vector":
                assert hits[0]["video_id"] == "named0"
        assert _ids(rec.search("zorblat quenix", k=3)) == [
            h["video_id"] for h in c.post("/search", json={"query": "zorblat quenix", "k": 3}).json()["hits"]
        ]
        r = c.post("/search", json={"query": "red", "mode": "fuzzy"})
        assert r.status_code == 422 and r.json() == {"error": "mode: must be one of 'vector', 'lexical' or 'hybrid'"}
    with TestClient(create_app(no_text)) as c:
        r = c.post("/search", json={"query": "red", "mode": "lexical"})
        assert r.status_code == 400 and "search mode 'lexical' needs catalog text" in r.json()["error"]


def test_cli_mode(rec: Recommender, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = rec.save(tmp_path / "titled")
    for mode in MODES:
        code = main(["search", "--bundle", str(out), "zorblat quenix", "-k", "3", "--mode", mode, "--json", "-q"])
        hits = json.loads(capsys.readouterr().out)["hits"]
        assert code == 0 and ("scores" in hits[0]) == (mode == "hybrid")
        assert hits[0]["video_id"] == "named0" or mode == "vector"
    with pytest.raises(SystemExit) as e:
        main(["search", "--bundle", str(out), "red", "--mode", "fuzzy"])
    assert e.value.code == 2 and "invalid choice: 'fuzzy'" in capsys.readouterr().err
