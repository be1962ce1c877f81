"""The Python API on a real (tiny) bundle: filters, exclusions, seen items, add / remove / save / load, threads."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from multimodal_rec import Recommender, UserError
from multimodal_rec.bundle import read_manifest
from multimodal_rec.index import search as index_search
from multimodal_rec.index.build import build_index
from multimodal_rec.index.search import exact_search
from multimodal_rec.serving.validation import MAX_EXCLUDE

QUERIES = ["a red circle moving left", "blue squares", "a green ball moving up", "white triangles", "yellow"]
HISTORY = ["a red ball moving left", "red dots going left"]


@pytest.fixture(scope="module")
def rec(bundle: Path) -> Recommender:
    return Recommender.load(bundle)


@pytest.fixture
def fresh(bundle: Path) -> Recommender:
    """A Recommender of its own, for tests that change the catalog."""
    return Recommender.load(bundle)


def _ids(hits: list) -> list[str]:
    return [h.video_id for h in hits]


def _all_results(r: Recommender) -> list[tuple[list[str], np.ndarray]]:
    """(ids, scores) of every query over the whole catalog (vector mode: BM25's corpus statistics move with every
    add and compaction, see test_hybrid.py), and of one recommendation."""
    out = [r.search(q, k=len(r), mode="vector") for q in QUERIES] + [r.recommend(HISTORY, k=10)]
    return [(_ids(hits), np.array([h.score for h in hits])) for hits in out]


def _same(a: list[tuple[list[str], np.ndarray]], b: list[tuple[list[str], np.ndarray]]) -> bool:
    """Same ids in the same order; scores equal up to float noise (an exact scan vs FAISS Flat)."""
    return all(ia == ib and np.allclose(sa, sb, atol=1e-5) for (ia, sa), (ib, sb) in zip(a, b, strict=True))


# --- filters and exclusions ---------------------------------------------------------------------------------------
def test_search_filters_equal_exact_search_over_passing_rows(rec: Recommender) -> None:
    filters = {"color": ["red", "blue"], "duration_s": (None, 2.0)}
    cat = rec.catalog
    passing = np.flatnonzero(cat["color"].isin(["red", "blue"]) & (cat["duration_s"] <= 2.0))
    assert 3 <= len(passing) < len(cat)
    hits = rec.search("a red circle moving left", k=len(passing) + 5, filters=filters, mode="vector")
    assert len(hits) == len(passing) and [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert all(h.metadata["color"] in ("red", "blue") and h.metadata["duration_s"] <= 2.0 for h in hits)
    xq = rec.encode_queries(["a red circle moving left"])
    D, I = exact_search(rec.embeddings[passing], xq, 3)  # noqa: E741
    top = rec.search("a red circle moving left", k=3, filters=filters, mode="vector")
    assert _ids(top) == [rec.video_ids[passing[i]] for i in I[0]]
    np.testing.assert_allclose([h.score for h in top], D[0], atol=1e-4)
    batch = rec.search_batch(QUERIES[:2], k=3, filters={"shape": "circle"})
    assert all(h.metadata["shape"] == "circle" for hits in batch for h in hits) and all(len(b) == 3 for b in batch)


def test_bad_filters_are_user_errors(rec: Recommender) -> None:
    with pytest.raises(UserError, match="unknown filter column 'colour'"):
        rec.search("red", filters={"colour": "red"})
    with pytest.raises(UserError, match="a range needs a numeric or date column"):
        rec.recommend(HISTORY, filters={"color": ("a", "b")})
    with pytest.raises(UserError, match="expected a number"):
        rec.search_batch(["red"], filters={"duration_s": (None, "60")})


def test_exclude_keeps_k_hits(rec: Recommender) -> None:
    first = rec.recommend(HISTORY, k=5, exclude_seen=False)
    banned = _ids(first[:3])
    again = rec.recommend(HISTORY, k=5, exclude=banned, exclude_seen=False)
    assert len(again) == 5 and not set(_ids(again)) & set(banned)
    assert _ids(again)[:2] == _ids(first)[3:]
    with pytest.raises(UserError, match="exclude"):
        rec.recommend(HISTORY, exclude="v0001")
    for bad in (np.ones((1, rec.xb.shape[1] + 1)), np.ones(rec.xb.shape[1]), np.full((1, rec.xb.shape[1]), np.nan)):
        with pytest.raises(UserError, match="query vectors"):
            rec.search_vectors(bad, k=3)


def test_seen_items_are_excluded_by_default(rec: Recommender) -> None:
    """A history item equal to a video id or to a title marks those videos as seen."""
    by_id, titled = rec.video_ids[0], rec.catalog["title"].iloc[5]
    same_title = {v for v, t in zip(rec.video_ids, rec.catalog["title"], strict=True) if t == titled}
    history = [by_id, f"  {titled} ", "red dots going left"]
    everything = _ids(rec.recommend(history, k=len(rec), exclude_seen=False))
    assert {by_id} | same_title <= set(everything)
    unseen = _ids(rec.recommend(history, k=len(rec)))
    assert set(unseen) == set(everything) - {by_id} - same_title
    assert len(rec.recommend(history, k=5)) == 5


def test_exclude_is_capped(rec: Recommender) -> None:
    """At most MAX_EXCLUDE ids per call (a bound on what one request costs); an iterable is read no further."""
    ids = [f"x{i}" for i in range(MAX_EXCLUDE)]
    assert len(rec.recommend(HISTORY, k=3, exclude=ids)) == 3  # at the cap: fine (unknown ids are ignored)
    message = f"exclude may list at most {MAX_EXCLUDE} video ids"
    with pytest.raises(UserError, match=message):
        rec.recommend(HISTORY, k=3, exclude=[*ids, "one-more"])
    with pytest.raises(UserError, match=message):
        rec.search_vectors(rec.text_queries(QUERIES[:1]), k=3, exclude=[*ids, "one-more"])
    read = []

    def many() -> Iterator[str]:
        for i in range(3 * MAX_EXCLUDE):
            read.append(i)
            yield f"g{i}"

    with pytest.raises(UserError, match=message):
        rec.recommend(HISTORY, k=3, exclude=many())
    assert len(read) == MAX_EXCLUDE + 1


def test_seen_matching_is_case_sensitive(rec: Recommender) -> None:
    """As the README says: a history item names a video when it equals its id or title exactly, surrounding
    whitespace aside; an item that differs only in case names nothing."""
    vid, title = rec.video_ids[0], str(rec.catalog["title"].iloc[5])
    same_title = {v for v, t in zip(rec.video_ids, rec.catalog["title"], strict=True) if t == title}
    other_case = [title.upper(), title.swapcase(), vid.upper()]
    assert not set(other_case) & (set(rec.video_ids) | set(rec.catalog["title"])), "the test needs case-only twins"
    for history, excluded in (
        ([*other_case, "red dots going left"], set()),
        ([f"\t{title}  ", f" {vid}", "red dots going left"], same_title | {vid}),
    ):
        everything = set(_ids(rec.recommend(history, k=len(rec), exclude_seen=False)))
        assert excluded <= everything
        assert set(_ids(rec.recommend(history, k=len(rec)))) == everything - excluded


@pytest.mark.parametrize(
    ("factory", "exact_subset_max"),
    [(None, 4096), (None, 0), ("HNSW32", 0), ("IVF4,Flat", 0)],  # 0: every filter goes through FAISS's ID selector
)
def test_filtered_search_never_returns_removed_videos(
    fresh: Recommender, monkeypatch: pytest.MonkeyPatch, factory: str | None, exact_subset_max: int
) -> None:
    monkeypatch.setattr(index_search, "EXACT_SUBSET_MAX", exact_subset_max)
    if factory:
        fresh.index = build_index(fresh.xb, factory, nprobe=4)
    filters = {"color": ["red", "blue"]}
    passing = {v for v, c in zip(fresh.video_ids, fresh.catalog["color"], strict=True) if c in ("red", "blue")}
    gone = _ids(fresh.search(QUERIES[0], k=3, filters=filters))
    gone.append(next(v for v in fresh.video_ids if v not in passing))  # a tombstone the filter rejects anyway
    fresh.remove_videos(gone)
    live = passing - set(gone)
    assert len(live) >= 5
    assert set(_ids(fresh.search(QUERIES[0], k=1000, filters=filters))) == live
    assert all(set(_ids(hits)) == live for hits in fresh.search_batch(QUERIES[1:3], k=1000, filters=filters))
    assert set(_ids(fresh.recommend(HISTORY, k=1000, filters=filters, exclude_seen=False))) == live
    xq = fresh.text_queries(QUERIES[:1])
    assert set(_ids(fresh.search_vectors(xq, k=1000, exclude=[min(live)], filters=filters)[0])) == live - {min(live)}
    top = fresh.search(QUERIES[0], k=5, filters=filters)
    assert len(top) == 5 and not set(_ids(top)) & set(gone)


# --- add / remove / save / load -----------------------------------------------------------------------------------
def test_load_memory_maps_and_first_change_copies(fresh: Recommender) -> None:
    assert fresh.mapped, "Recommender.load shares the index through mmap"
    before = _all_results(fresh)
    fresh.add_videos(pd.DataFrame({"video_id": ["x1"]}), embeddings=fresh.embeddings[:1] * 3)  # no abort
    assert not fresh.mapped and fresh.index.ntotal == len(fresh) == len(before[0][0]) + 1
    assert [h.video_id for h in fresh.search(QUERIES[0], k=len(fresh))].count("x1") == 1
    after = _all_results(fresh)[:-1]
    assert [[v for v in ids if v != "x1"] for ids, _ in after] == [ids for ids, _ in before[:-1]]


def test_add_encodes_with_the_bundle_video_tower(fresh: Recommender, world: Path) -> None:
    cat = pd.read_csv(world / "catalog.csv", dtype={"video_id": str})
    src = cat.iloc[[2, 7]].copy()
    src["video_id"] = ["new-a", "new-b"]
    src["path"] = [str(world / p) for p in src["path"]]
    bad = src.iloc[:1].assign(video_id="broken", path=str(world / "no-such.mp4"))
    res = fresh.add_videos(pd.concat([src, bad], ignore_index=True))
    assert res.added == ["new-a", "new-b"] and [s["video_id"] for s in res.skipped] == ["broken"]
    for new, old in (("new-a", cat["video_id"][2]), ("new-b", cat["video_id"][7])):
        np.testing.assert_allclose(
            fresh.embeddings[fresh.row_of[new]], fresh.embeddings[fresh.row_of[old]], atol=1e-4
        )  # same clip, same vector as `mmrec encode` gave
    row = fresh.row_of["new-a"]
    assert fresh.catalog["train_interactions"].iloc[row] == 0 and fresh.xb[row, -1] == 0.0  # no popularity yet
    hit = fresh.search_vectors(fresh.xb[row : row + 1], k=2)[0]
    assert {hit[0].video_id, hit[1].video_id} == {"new-a", cat["video_id"][2]}
    assert hit[0].metadata["title"] == cat["title"][2]
    with pytest.raises(UserError, match="already in the catalog"):
        fresh.add_videos(src.iloc[:1])
    with pytest.raises(UserError, match="lacks"):
        fresh.add_videos(src.assign(video_id=["z1", "z2"], colour="red"))


def test_add_checks_embeddings(fresh: Recommender) -> None:
    D = fresh.embeddings.shape[1]
    ids = pd.DataFrame({"video_id": ["e1", "e2"]})
    for bad, message in (
        (np.ones((2, D + 1)), "shape"),
        (np.ones((3, D)), "shape"),
        (np.zeros((2, D)), "non-zero"),
        (np.full((2, D), np.nan), "finite"),
    ):
        with pytest.raises(UserError, match=message):
            fresh.add_videos(ids, embeddings=bad)
    with pytest.raises(UserError, match="repeat video_id"):
        fresh.add_videos(pd.DataFrame({"video_id": ["e1", "e1"]}), embeddings=np.ones((2, D)))
    with pytest.raises(UserError, match="video_id and path"):
        fresh.add_videos(ids)
    assert len(fresh) == fresh.index.ntotal, "a refused add changes nothing"


def test_removed_videos_vanish_at_once_and_k_hits_remain(fresh: Recommender) -> None:
    top = fresh.search(QUERIES[0], k=5)
    gone = _ids(top[:2])
    assert fresh.remove_videos(gone) == 2 and len(fresh) == fresh.index.ntotal - 2
    after = fresh.search(QUERIES[0], k=5)
    assert len(after) == 5 and _ids(after)[:3] == _ids(top)[2:]
    assert not set(gone) & set(_ids(fresh.search(QUERIES[0], k=1000)))
    assert not set(gone) & set(_ids(fresh.recommend(HISTORY, k=1000, exclude_seen=False)))
    assert not set(gone) & {h.video_id for hits in fresh.search_batch(QUERIES, k=1000) for h in hits}
    with pytest.raises(UserError, match="no such video id"):
        fresh.remove_videos([gone[0]])
    with pytest.raises(UserError, match="no such video id"):
        fresh.remove_videos(["v0000", "nope"])
    assert "v0000" in fresh.row_of, "a refused removal removes nothing"
    fresh.add_videos(pd.DataFrame({"video_id": [gone[0]]}), embeddings=fresh.embeddings[fresh.row_of["v0000"]][None])
    assert gone[0] in _ids(fresh.search(QUERIES[0], k=1000)), "a removed id can be added again"


def test_add_remove_save_load_round_trip(fresh: Recommender, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    extra = fresh.embeddings[:3] + 0.1 * rng.normal(size=(3, fresh.embeddings.shape[1])).astype(np.float32)
    fresh.add_videos(pd.DataFrame({"video_id": ["n1", "n2", "n3"], "title": ["N1", "N2", "N3"]}), embeddings=extra)
    fresh.remove_videos(["n2", fresh.video_ids[4], fresh.video_ids[10]])
    served = len(fresh)
    before = _all_results(fresh)
    out = fresh.save(tmp_path / "saved")
    assert _same(_all_results(fresh), before), "compacting changed the answers"
    manifest = read_manifest(out)  # checksums verified
    assert manifest["count"] == served and manifest["embed_dim"] == fresh.embeddings.shape[1]
    loaded = Recommender.load(out)
    assert len(loaded) == served == loaded.index.ntotal and loaded.video_ids == fresh.video_ids
    assert _same(_all_results(loaded), before)
    assert {"n1", "n3"} <= set(loaded.row_of) and "n2" not in loaded.row_of
    src = pd.read_parquet(out / "sources.parquet")
    assert list(src["video_id"]) == loaded.video_ids and src.set_index("video_id")["size"]["n1"] == -1
    # and the saved bundle is protected like any other
    cat = pd.read_parquet(out / "catalog.parquet")
    cat.loc[0, "title"] = "tampered"
    cat.to_parquet(out / "catalog.parquet", index=False)
    with pytest.raises(UserError, match=r"checksum mismatch for catalog\.parquet"):
        Recommender.load(out)


def test_save_over_the_loaded_bundle(bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    r = Recommender.load(copy)
    r.remove_videos([r.video_ids[0]])
    r.save(copy)  # replaces the directory the index is mapped from
    before = _all_results(r)
    assert _same(_all_results(Recommender.load(copy)), before)


@pytest.mark.parametrize("factory", ["HNSW32", "IVF4,Flat"])
def test_add_remove_save_on_approximate_indexes(fresh: Recommender, tmp_path: Path, factory: str) -> None:
    fresh.index = build_index(fresh.xb, factory, nprobe=4)
    fresh.manifest = {**fresh.manifest, "index": factory}
    extra = fresh.embeddings[5:7][:, ::-1].copy()
    fresh.add_videos(pd.DataFrame({"video_id": ["a1", "a2"]}), embeddings=extra)
    fresh.remove_videos(["a1", fresh.video_ids[0]])
    before = _all_results(fresh)
    assert "a1" not in {v for ids, _ in before for v in ids} and "a2" in before[0][0]
    loaded = Recommender.load(fresh.save(tmp_path / factory.replace(",", "_")))
    assert _same(_all_results(loaded), _all_results(fresh))
    assert loaded.index.ntotal == len(loaded) == len(before[0][0])


# --- threads ------------------------------------------------------------------------------------------------------
def test_concurrent_reads_equal_sequential(rec: Recommender) -> None:
    calls = [(q, f) for q in QUERIES for f in (None, {"shape": "circle"}, {"duration_s": (1.0, None)})] * 14
    expected = {(q, str(f)): _ids(rec.search(q, k=7, filters=f)) for q, f in calls}
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda c: _ids(rec.search(c[0], k=7, filters=c[1])), calls))
    assert len(calls) >= 200
    assert got == [expected[(q, str(f))] for q, f in calls]


def test_searches_during_changes_see_whole_states(fresh: Recommender) -> None:
    """A writer adds and removes a video over and over; readers see it fully there or fully gone."""
    xq = fresh.text_queries([QUERIES[0]])
    base = _ids(fresh.search_vectors(xq, k=5)[0])
    vec = fresh.embeddings[fresh.row_of[base[0]]][None] * 1.0  # scores like the current top hit
    stop, errors = threading.Event(), []

    def writer() -> None:
        for _ in range(15):
            fresh.add_videos(pd.DataFrame({"video_id": ["flip"]}), embeddings=vec)
            fresh.remove_videos(["flip"])
        stop.set()

    def reader() -> None:
        while not stop.is_set():
            ids = _ids(fresh.search_vectors(xq, k=5)[0])
            if ids != base and (ids.count("flip") != 1 or [v for v in ids if v != "flip"] != base[:4]):
                errors.append(ids)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]
    assert _ids(fresh.search_vectors(xq, k=5)[0]) == base


# --- history items that are video ids (a platform's watch history) ------------------------------------------------
def _titled(rec: Recommender) -> tuple[str, str, set[str]]:
    """A video id, its title and the other videos with that title (one with twins when there is one)."""
    titles = list(rec.catalog["title"])
    row = next((i for i, t in enumerate(titles) if titles.count(t) > 1), 3)
    twins = {v for v, t in zip(rec.video_ids, titles, strict=True) if t == titles[row]} - {rec.video_ids[row]}
    return rec.video_ids[row], str(titles[row]), twins


def test_a_history_video_id_is_read_as_its_title(rec: Recommender) -> None:
    """["v0003"] recommends what the title of v0003 does (the tower reads texts), and explain shows the title."""
    vid, title, twins = _titled(rec)
    assert vid != title
    for history, as_texts in (
        ([vid], [title]),
        (["a green ball moving up", f" {vid} "], ["a green ball moving up", title]),
    ):
        got = rec.recommend(history, k=10, exclude_seen=False)
        want = rec.recommend(as_texts, k=10, exclude_seen=False)
        assert _ids(got) == _ids(want)
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-5)
        assert [t for t, _ in rec.explain(history)] == as_texts
        read = rec.resolve_history(history)
        assert (read.items, read.texts, read.resolved, read.unknown) == (history, as_texts, {vid: title}, [])
    unseen = set(_ids(rec.recommend([vid], k=len(rec))))  # seen items are matched on the caller's own items
    assert vid not in unseen and twins <= unseen
    free = rec.resolve_history(["v9999", vid.upper()])  # not served ids: free text, as before
    assert free.texts == ["v9999", vid.upper()] and not free.resolved and not free.unknown


def test_unknown_history_ids_are_reported_not_embedded(rec: Recommender) -> None:
    vid, title, _ = _titled(rec)
    history = ["no-such-id", vid, "a red ball"]  # with history_ids every item is an id: a text is unknown too
    read = rec.resolve_history(history, history_ids=True)
    assert (read.texts, read.resolved, read.unknown) == ([title], {vid: title}, ["no-such-id", "a red ball"])
    assert read.to_dict() == {"resolved": {vid: title}, "unknown_ids": ["no-such-id", "a red ball"]}
    got = rec.recommend(history, k=10, exclude_seen=False, history_ids=True)
    assert _ids(got) == _ids(rec.recommend([title], k=10, exclude_seen=False))
    assert [t for t, _ in rec.explain(history, history_ids=True)] == [title]
    for call in (rec.recommend, rec.explain, rec.resolve_history):
        with pytest.raises(UserError, match=r"^no usable history item .*'no-such-id', 'v9999'$"):
            call(["no-such-id", " v9999 "], history_ids=True)


def test_a_history_id_of_a_video_without_text_is_left_out(fresh: Recommender) -> None:
    fresh.add_videos(pd.DataFrame({"video_id": ["untitled"]}), embeddings=np.asarray(fresh.embeddings[:1]))
    read = fresh.resolve_history(["untitled", "a red ball"])
    assert (read.texts, read.unknown) == (["a red ball"], ["untitled"])
    with pytest.raises(UserError, match=r"no usable history item .*'untitled'"):
        fresh.recommend(["untitled"])
