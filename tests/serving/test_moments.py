"""Serving at segment granularity: videos ranked by their best segment, the moment each hit points at, segment-level
hits, and segments kept aligned through filters, tombstones, adds, saves and compaction."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from multimodal_rec.model.prior import PRIOR_COLUMN, index_vectors, with_prior_column
from multimodal_rec.serving.catalog import CatalogState
from multimodal_rec.serving.moments import fwhm_span
from multimodal_rec.serving.recommender import Recommender
from multimodal_rec.serving.segments import NewRows, raw_segments, segment_table

D = 8
SEG = 10.0  # seconds per hand-made segment


def unit(*weights: float) -> np.ndarray:
    """A unit vector with the given leading weights (the rest 0)."""
    v = np.zeros(D, np.float32)
    v[: len(weights)] = weights
    return v / np.linalg.norm(v)


E = np.eye(D, dtype=np.float32)
QUERIES = {"circle": E[0], "square": E[5]}  # query text -> its (hand-made) query vector


@pytest.fixture(scope="module")
def model() -> Any:
    from multimodal_rec.config import load_config
    from multimodal_rec.model.multimodal import create_model

    return create_model(load_config("tiny").model)


def build(model: Any, videos: dict[str, list[np.ndarray]], *, segments: bool = True, duration: bool = True) -> Any:
    """A Recommender over hand-made videos (id -> segment vectors, each ``SEG`` seconds), text queries read from
    :data:`QUERIES`; item vectors are the normalised mean of the segments. ``segments=False``: a bundle without
    segment files (videos of one segment each)."""
    ids = list(videos)
    catalog = pd.DataFrame({"video_id": ids, "color": [f"c{i % 2}" for i in range(len(ids))], PRIOR_COLUMN: 0})
    if duration:
        catalog["duration_s"] = [SEG * len(v) for v in videos.values()]
    emb = np.stack([np.mean(v, axis=0) for v in videos.values()]).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    xb = index_vectors(emb, catalog, model.cfg.popularity_prior)
    import faiss

    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    kw: dict[str, Any] = {}
    if segments:
        spans = [(vid, j * SEG, (j + 1) * SEG) for vid, v in videos.items() for j in range(len(v))]
        kw["segments"] = pd.DataFrame(spans, columns=["video_id", "start_s", "end_s"])
        kw["segment_embeddings"] = np.stack([s for v in videos.values() for s in v]).astype(np.float32)
    rec = Recommender(Path("."), model, {}, catalog, emb, index, **kw)
    rec.text_queries = lambda texts: with_prior_column(np.stack([QUERIES[t] for t in texts]), rec.xb.shape[1], 0.0)
    return rec


def world() -> dict[str, list[np.ndarray]]:
    """``long``: six segments, the query ``circle`` matches 20-40 s strongly (a weak tail at 40-50 s); ``short``:
    one segment matching less than long's best but more than long's mean; others unrelated."""
    long = [E[1], E[1], unit(1, 0.1), unit(1, 0, 0.3), unit(0.3, 0, 1), E[1]]
    return {"long": long, "short": [unit(0.8, 0, 0, 0.6)], "other": [E[3]], "far": [E[4], E[4]], "x": [E[6]]}


@pytest.mark.parametrize(
    ("scores", "span"),
    [
        ([0.1, 0.9, 0.8, 0.2, 0.1], (1, 2)),  # extends to the adjacent strong segment
        ([0.1, 0.9, 0.2, 0.9, 0.1], (1, 1)),  # not across a weak one to another strong one
        ([0.7, 0.8, 0.9, 0.86, 0.75], (2, 3)),  # median 0.8: threshold 0.85
        ([0.1, 0.8, 0.9, 0.85, 0.1, 0.1, 0.1], (1, 3)),  # both sides, up to the weak tail
        ([0.0, 0.5, 0.6, 1.0], (3, 3)),  # baseline = median 0.55: threshold 0.775
        ([0.3, 0.9], (1, 1)),  # <= 2 segments: the best alone
        ([0.4], (0, 0)),
    ],
)
def test_fwhm_rule(scores: list[float], span: tuple[int, int]) -> None:
    assert fwhm_span(np.asarray(scores)) == span


def test_a_long_video_ranks_by_its_best_segment_with_the_right_moment(model: Any) -> None:
    rec = build(model, world())
    hits = rec.search("circle", k=3)
    assert [h.video_id for h in hits][:2] == ["long", "short"]
    best = float(unit(1, 0.1) @ E[0])
    assert hits[0].score == pytest.approx(best, abs=1e-6)  # the best segment's score, not the mean vector's
    assert hits[0].moment == {"start_s": 20.0, "end_s": 40.0, "score": pytest.approx(best, abs=1e-6)}
    assert hits[1].moment == {"start_s": 0.0, "end_s": 10.0, "score": pytest.approx(0.8, abs=1e-6)}
    # the same videos as one vector each (the mean): long drops below short
    flat = build(model, world(), segments=False)
    assert [h.video_id for h in flat.search("circle", k=2)] == ["short", "long"]
    assert rec.segments.groupby("video_id").size().to_dict() == {"long": 6, "short": 1, "other": 1, "far": 2, "x": 1}


def test_search_moments_are_segment_level(model: Any) -> None:
    rec = build(model, world())
    hits = rec.search_moments("circle", k=3)
    assert [(h.video_id, h.moment["start_s"], h.moment["end_s"]) for h in hits] == [
        ("long", 20.0, 30.0),
        ("long", 30.0, 40.0),
        ("short", 0.0, 10.0),
    ]
    assert [h.rank for h in hits] == [1, 2, 3] and all(h.score == h.moment["score"] for h in hits)
    assert all("moment" in h.to_dict() for h in hits) and "scores" not in hits[0].to_dict()
    assert [h.video_id for h in rec.search_moments("circle", k=3, min_score=0.9)] == ["long", "long"]


def test_filters_and_tombstones_hold_at_segment_granularity(model: Any) -> None:
    rec = build(model, world())  # colours alternate: long c0, short c1, other c0, far c1, x c0
    for search in (rec.search, rec.search_moments):
        hits = search("circle", k=2, filters={"color": "c1"})
        assert [h.video_id for h in hits] == ["short", "far"]  # long's segments never surface; k hits still come back
    rec.remove_videos(["long"])
    for search in (rec.search, rec.search_moments):
        hits = search("circle", k=4)
        assert "long" not in {h.video_id for h in hits} and len(hits) == 4
    assert len(rec.search("circle", k=10)) == 4  # every live video, none twice
    assert len(rec.search_moments("circle", k=10)) == 5  # every live segment (far has two)


def test_enough_segments_are_fetched_for_k_distinct_videos(model: Any) -> None:
    videos = {"many": [unit(1, 0.01 * j) for j in range(20)]}  # 20 segments all better than any other video
    videos |= {f"v{i}": [unit(0.5, 0, 0, 0, 0, 0, 0, 0.1 * (i + 1))] for i in range(6)}
    rec = build(model, videos)
    for k in (1, 3, 7):
        hits = rec.search("circle", k=k)
        assert len({h.video_id for h in hits}) == len(hits) == k
        assert hits[0].video_id == "many" and hits[0].moment["start_s"] == 0.0
    assert len(rec.search("circle", k=5, filters={"color": "c0"})) == 4  # many, v1, v3, v5: all that pass


def test_searches_during_adds_and_removes_see_whole_segment_states(model: Any) -> None:
    """Readers never see a video without its segments, a removed video's segments, or a video twice."""
    import threading

    rec = build(model, world())
    errors: list[BaseException] = []
    gone: list[str] = []  # removed, in order (appended once remove_videos returned)
    done = threading.Event()

    def writer() -> None:
        try:
            for i in range(15):
                new = pd.DataFrame({"video_id": [f"w{i}"], "duration_s": [20.0]})
                rec.add_videos(new, unit(1, 0.2 * i)[None])  # strong matches: they would surface
                if i % 3 == 0:
                    rec.remove_videos([f"w{i}"])
                    gone.append(f"w{i}")
        except BaseException as e:
            errors.append(e)
        finally:
            done.set()

    def reader() -> None:
        try:
            while not done.is_set():
                hits = rec.search("circle", k=4)
                assert len({h.video_id for h in hits}) == len(hits) == 4 and all(h.moment for h in hits)
                before = set(gone)
                assert not before & {h.video_id for h in rec.search_moments("circle", k=6)}
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer), *(threading.Thread(target=reader) for _ in range(2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[0]
    removed = {f"w{i}" for i in range(0, 15, 3)}
    assert not removed & {h.video_id for h in rec.search_moments("circle", k=20)}
    assert len(rec.segments) == 11 + 15  # the world's 11 segments and one per added video (removed ones until save)


def test_without_segment_files_answers_are_unchanged_and_moments_are_whole_videos(model: Any) -> None:
    for duration in (True, False):
        rec = build(model, world(), segments=False, duration=duration)
        hits = rec.search("circle", k=5)
        before = rec.search_vectors(rec.text_queries(["circle"]), 5)[0]  # the video index alone, as before segments
        assert [(h.video_id, h.score) for h in hits] == [(h.video_id, h.score) for h in before]
        for h in hits:
            end = SEG * len(world()[h.video_id]) if duration else None
            assert h.moment == {"start_s": 0.0, "end_s": end, "score": pytest.approx(h.score, abs=1e-6)}
        assert [h.to_dict() for h in rec.search_moments("circle", k=5)] == [h.to_dict() for h in hits]
        assert len(rec.segments) == len(rec) and list(rec.segments["row"]) == list(range(len(rec)))  # one per video


def test_raw_segment_vectors_of_encoded_videos() -> None:
    """What add_videos keeps for incremental encoding: a one-segment video's raw vector is its content vector, a
    segment of a video without text its search vector; not known (marked, so never reused) when several segments
    were mixed with text."""
    seg = np.arange(12, dtype=np.float32).reshape(4, 3)
    content = -np.arange(6, dtype=np.float32).reshape(2, 3)
    rows = np.array([0, 1, 1, 1])
    want = np.vstack([content[0], seg[1:]])
    text = np.array([[0, 0, 0], [1, 0, 0]], np.float32)  # the long video has text
    for txt, weight in ((np.zeros((2, 3), np.float32), 0.5), (None, 0.5), (text, 0.0), (text[::-1].copy(), 0.5)):
        raw, exact = raw_segments(seg, rows, content, txt, weight)
        assert np.array_equal(raw, want) and exact.tolist() == [True, True]
    raw, exact = raw_segments(seg, rows, content, text, 0.5)
    assert exact.tolist() == [True, False]


def test_hits_of_another_ranking_get_moments() -> None:
    """Hits a lexical or fused ranking made (no moment yet): their video's best moment for a query vector, or
    without one the whole video with no score; a hit that has a moment keeps it."""
    from multimodal_rec.serving.results import Hit

    state = _state(world())
    kept = {"start_s": 1.0, "end_s": 2.0, "score": 0.5}
    hits = [[Hit("long", 3.0, 1), Hit("short", 2.0, 2), Hit("far", 1.0, 3, moment=dict(kept))]]
    got = state.with_moments([[Hit(h.video_id, h.score, h.rank, moment=h.moment) for h in hits[0]]], E[0][None])[0]
    assert got[0].moment == {"start_s": 20.0, "end_s": 40.0, "score": pytest.approx(float(unit(1, 0.1)[0]))}
    assert got[1].moment["end_s"] == 10.0 and got[2].moment == kept
    whole = state.with_moments(hits)[0]
    assert [h.moment for h in whole] == [
        {"start_s": 0.0, "end_s": 60.0, "score": None},
        {"start_s": 0.0, "end_s": 10.0, "score": None},
        kept,
    ]


def _state(videos: dict[str, list[np.ndarray]]) -> CatalogState:
    catalog = pd.DataFrame({"video_id": list(videos), PRIOR_COLUMN: 0})
    emb = np.stack([v[0] for v in videos.values()]).astype(np.float32)
    import faiss

    index = faiss.IndexFlatIP(D)
    index.add(emb)
    spans = [(vid, j * SEG, (j + 1) * SEG) for vid, v in videos.items() for j in range(len(v))]
    segs = pd.DataFrame(spans, columns=["video_id", "start_s", "end_s"])
    vectors = np.stack([s for v in videos.values() for s in v]).astype(np.float32)
    table = segment_table(catalog, emb, segs, vectors)
    return CatalogState(catalog, emb, index, popularity_prior=False, segments=table)


def _random_video(rng: np.random.Generator) -> list[np.ndarray]:
    n = int(rng.choice([1, 1, 2, 3, 5]))
    v = rng.standard_normal((n, D)).astype(np.float32)
    return list(v / np.linalg.norm(v, axis=1, keepdims=True))


def test_segments_stay_aligned_through_random_adds_removes_and_compactions() -> None:
    """Against a plain dict (video id -> its segment vectors): after every step, each served video's segments, and
    the ranking by best segment with its score, are the model's."""
    rng = np.random.default_rng(0)
    model = {f"s{i}": _random_video(rng) for i in range(4)}
    model["s0"] = model["s0"] + [model["s0"][0]]  # at least one video with several segments
    state, fresh = _state(model), 0
    for step in range(40):
        op = rng.choice(["add", "remove", "compact"], p=[0.45, 0.35, 0.2])
        if op == "add":
            new = {f"n{fresh + i}": _random_video(rng) for i in range(int(rng.integers(1, 4)))}
            fresh += len(new)
            rows = np.concatenate([np.full(len(v), i) for i, v in enumerate(new.values())])
            vectors = np.stack([s for v in new.values() for s in v])
            spans = np.array([(j * SEG, (j + 1) * SEG) for v in new.values() for j in range(len(v))])
            xb = np.stack([v[0] for v in new.values()])
            state.add(pd.DataFrame({"video_id": list(new)}), xb, [], False, NewRows(vectors, rows, spans))
            model |= new
        elif op == "remove" and len(model) > 1:
            gone = list(rng.choice(sorted(model), size=int(rng.integers(1, min(3, len(model)))), replace=False))
            state.remove(gone)
            for vid in gone:
                del model[vid]
        elif op == "compact":
            with state.mutation():
                state.adopt(state.compacted())
        frame = state.segments.frame(state.video_ids)
        live = frame[frame["video_id"].isin(list(state.row_of))]
        for vid, segs in model.items():
            got = live[live["video_id"] == vid]
            assert list(got["start_s"]) == [j * SEG for j in range(len(segs))], (step, vid)
            assert np.allclose(state.segments.vectors[got.index.to_numpy()], np.stack(segs)), (step, vid)
        q = rng.standard_normal((1, D)).astype(np.float32)
        want = sorted(((max(float(s @ q[0]) for s in segs), vid) for vid, segs in model.items()), reverse=True)[:3]
        got_hits = state.search_text(q, 3)[0]
        assert [h.video_id for h in got_hits] == [vid for _, vid in want], step
        assert [h.score for h in got_hits] == pytest.approx([s for s, _ in want], abs=1e-5)


# --- with a real bundle: add, save, load; HTTP; CLI ----------------------------------------------------------------
QUERY_TEXTS = ["a red circle moving left", "green square", "blue dots rising"]


@pytest.fixture(scope="module")
def segmented(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Recommender, Path]:
    """The test bundle's videos with hand-cut segments (video i: 1 + i % 3 segments of random directions near its
    embedding), plus one video added from an embedding, one removed, then saved: (the live object, its bundle)."""
    base = Recommender.load(bundle, mmap=False)
    rng = np.random.default_rng(1)
    rows, vectors, spans = [], [], []
    for i, (vid, e) in enumerate(zip(base.video_ids, base.embeddings, strict=True)):
        for j in range(1 + i % 3):
            v = e + (0.5 * rng.standard_normal(e.shape) if j else 0)
            rows.append(vid)
            vectors.append(v / np.linalg.norm(v))
            spans.append((j * 2.0, (j + 1) * 2.0))
    segs = pd.DataFrame({"video_id": rows, "start_s": [s for s, _ in spans], "end_s": [e for _, e in spans]})
    rec = Recommender(
        base.path,
        base.model,
        base.manifest,
        base.catalog,
        np.asarray(base.embeddings),
        base.index,
        base.cfg,
        sources=None,
        segments=segs,
        segment_embeddings=np.stack(vectors).astype(np.float32),
        segment_content=np.stack(vectors).astype(np.float32),  # no text: raw vectors are the search vectors
    )
    new = rec.embeddings[:1] + 0.1
    rec.add_videos(pd.DataFrame({"video_id": ["added"], "duration_s": [7.5]}), new)
    rec.remove_videos([rec.video_ids[1]])
    out = rec.save(tmp_path_factory.mktemp("segmented") / "bundle")
    return rec, out


def _answers(rec: Recommender) -> list[Any]:
    hits = [rec.search(q, k=6) for q in QUERY_TEXTS] + [rec.search_moments(q, k=6) for q in QUERY_TEXTS]
    hits.append(rec.search("red", k=5, filters={"color": "red"}))
    return [[(h.video_id, round(h.score, 5), h.moment["start_s"], h.moment["end_s"]) for h in hs] for hs in hits]


def test_add_save_load_answers_identically(segmented: tuple[Recommender, Path]) -> None:
    rec, out = segmented
    loaded = Recommender.load(out)
    assert _answers(loaded) == _answers(rec)
    assert loaded.segments[["video_id", "start_s", "end_s"]].equals(rec.segments[["video_id", "start_s", "end_s"]])
    added = loaded.segments[loaded.segments["video_id"] == "added"]
    assert added[["start_s", "end_s"]].values.tolist() == [[0.0, 7.5]]  # one segment spanning its duration
    assert len(loaded.segments) > len(loaded)  # some videos have several segments
    # the raw segment vectors (what incremental encoding reuses) stay aligned too: here they equal the search vectors
    assert np.array_equal(np.load(out / "segment_content.npy"), np.load(out / "segment_embeddings.npy"))


def test_hybrid_moments_as_in_full(segmented: tuple[Recommender, Path]) -> None:
    """On videos of several segments, hybrid hits completed after the fusion keep the moments built in full."""
    from hybrid_check import assert_hybrid_as_in_full

    assert_hybrid_as_in_full(segmented[0], QUERY_TEXTS)


def test_http_moments_flag(segmented: tuple[Recommender, Path]) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from multimodal_rec.serving.http import create_app

    rec, _ = segmented
    with TestClient(create_app(rec)) as c:
        plain = c.post("/search", json={"query": QUERY_TEXTS[0], "k": 20}).json()["hits"]
        seg = c.post("/search", json={"query": QUERY_TEXTS[0], "k": 20, "moments": True}).json()["hits"]
        assert all({"start_s", "end_s", "score"} == set(h["moment"]) for h in plain + seg)
        assert len({h["video_id"] for h in plain}) == 20  # videos once each
        assert all(h["moment"]["end_s"] - h["moment"]["start_s"] in (2.0, 7.5) for h in seg)  # one segment each
        want = rec.search_moments(QUERY_TEXTS[0], k=20)
        got = [(h["video_id"], h["moment"]["start_s"]) for h in seg]
        assert got == [(h.video_id, h.moment["start_s"]) for h in want]
        for bad in ("yes", 1, None):
            r = c.post("/search", json={"query": "red", "moments": bad})
            assert 400 <= r.status_code < 500 and set(r.json()) == {"error"}
            assert "moments" in r.json()["error"] and "\n" not in r.json()["error"]
        r = c.post("/search", json={"query": "red", "moments": True, "mode": "lexical"})  # segments: vector only
        assert r.status_code == 400 and "vector" in r.json()["error"] and "\n" not in r.json()["error"]


def test_cli_search_moments(segmented: tuple[Recommender, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from multimodal_rec.cli import main

    _, out = segmented
    assert main(["search", "--bundle", str(out), QUERY_TEXTS[0], "-k", "5", "--moments", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 5 and all(h["moment"]["end_s"] - h["moment"]["start_s"] in (2.0, 7.5) for h in hits)
    assert main(["search", "--bundle", str(out), QUERY_TEXTS[0], "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert len(lines) == 3 and all("00:0" in ln and "–" in ln for ln in lines)  # e.g. 00:02–00:04
