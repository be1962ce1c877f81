"""Synonym / query-rewrite files (Solr's synonyms.txt format): the parser, and that a file changes exactly the
queries and free-text history items it names, in every surface (Python, CLI, HTTP), and nothing when off."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from multimodal_rec.errors import UserError
from multimodal_rec.serving.synonyms import load_synonyms, parse_synonyms

RULES = """\
# a platform's own words
tv, television, telly

crimson, scarlet => red
  # an indented comment
three sided figure => triangle
science fiction => scifi
science => lab
moving => drifting
"""


def test_equivalent_terms_are_rewritten_to_the_first_of_their_group() -> None:
    syn = parse_synonyms(RULES)
    assert syn.rewrite("I watch Television and TELLY, not tv") == "I watch tv and tv, not tv"
    assert syn.rules == 6 and syn.info()["terms"] == 8  # television, telly, crimson, scarlet, 3 phrases, moving


def test_explicit_rules_whole_words_case_and_phrases() -> None:
    syn = parse_synonyms(RULES)
    assert syn.rewrite("a Crimson disc, a SCARLET orb") == "a red disc, a red orb"
    assert syn.rewrite("crimsonish scarlets redcrimson") == "crimsonish scarlets redcrimson"  # whole words only
    assert syn.rewrite("a three  sided\tFigure moving") == "a triangle drifting"  # a phrase across any whitespace
    assert syn.rewrite("science fiction about science") == "scifi about lab"  # the longest term first
    assert syn.rewrite("nothing to see here") == "nothing to see here"


def test_one_pass_and_the_first_right_hand_term() -> None:
    syn = parse_synonyms("a => b\nb => c\nx => y, z\n")
    assert syn.rewrite("a b x") == "b c y"  # a replacement is not rewritten again; only y of "y, z"


def test_duplicates_agree_or_are_refused() -> None:
    assert parse_synonyms("a => b\na => B\n").rewrite("a") == "b"  # the same target twice: fine
    with pytest.raises(UserError, match=r"syn.txt, line 3: 'a' is rewritten to 'b' on line 1 and to 'c' here"):
        parse_synonyms("a => b\n# x\na => c\n", "syn.txt")


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("a =>", "a term is needed on both sides"),
        ("=> b", "a term is needed on both sides"),
        ("a => b => c", "more than one '=>'"),
        ("a,,b", "an empty term"),
        ("a, b,", "an empty term"),
        ("lonely", "a rule needs two or more terms"),
        ("a, !!!", "the term '!!!' has no letter or digit"),
    ],
)
def test_a_malformed_line_is_one_error_naming_file_and_line(tmp_path: Path, line: str, why: str) -> None:
    f = tmp_path / "syn.txt"
    f.write_text(f"# ok\ntv, television\n\n{line}\n")
    with pytest.raises(UserError) as e:
        load_synonyms(f)
    msg = str(e.value)
    assert f"{f.resolve()}, line 4: {why}" in msg and "\n" not in msg


def test_file_is_recorded_by_path_hash_and_rule_count(tmp_path: Path) -> None:
    f = tmp_path / "syn.txt"
    f.write_text(RULES)
    info = load_synonyms(f).info()
    assert info == {
        "path": str(f.resolve()),
        "sha256": hashlib.sha256(f.read_bytes()).hexdigest(),
        "rules": 6,
        "terms": 8,
    }
    with pytest.raises(UserError, match="does not exist"):
        load_synonyms(tmp_path / "nope.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00a => b")
    with pytest.raises(UserError, match="not UTF-8"):
        load_synonyms(tmp_path / "bin.txt")


# --- applied by the Recommender (tiny bundle) -------------------------------------------------------------------
@pytest.fixture(scope="module")
def syn_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    f = tmp_path_factory.mktemp("syn") / "synonyms.txt"
    f.write_text(RULES)
    return f


@pytest.fixture(scope="module")
def plain(bundle: Path):
    from multimodal_rec.serving.recommender import Recommender

    return Recommender.load(bundle)


@pytest.fixture(scope="module")
def rewriting(bundle: Path, syn_file: Path):
    from multimodal_rec.serving.recommender import Recommender

    rec = Recommender.load(bundle)
    rec.synonyms.set(syn_file)
    return rec


def _same(a: list, b: list) -> bool:
    return [(h.video_id, h.score, h.rank, h.moment) for h in a] == [(h.video_id, h.score, h.rank, h.moment) for h in b]


def test_off_by_default(plain) -> None:
    assert plain.synonyms.rules is None and plain.synonyms.info is None and plain.info()["synonyms"] is None


@pytest.mark.parametrize("mode", ["vector", "lexical", "hybrid"])
def test_a_file_changes_exactly_the_queries_it_names(plain, rewriting, mode: str) -> None:
    named, other = "a crimson ball Moving left", "a blue square going up"
    got = rewriting.search(named, k=5, mode=mode)
    assert _same(got, plain.search("a red ball drifting left", k=5, mode=mode))  # as if typed rewritten
    if mode == "vector":
        assert not _same(got, plain.search(named, k=5, mode=mode))  # the rewrite did change this one
    # a query no rule names: identical hits, scores and moments, alone or in a batch (same batch, same padding)
    assert _same(rewriting.search(other, k=5, mode=mode), plain.search(other, k=5, mode=mode))
    batch = [other, "white triangles shrinking"]
    assert all(map(_same, rewriting.search_batch(batch, k=5, mode=mode), plain.search_batch(batch, k=5, mode=mode)))


def test_history_free_text_is_rewritten_ids_read_as_their_titles_are_not(plain, rewriting) -> None:
    vid = next(v for v, t in zip(plain.catalog["video_id"], plain.catalog["title"], strict=True) if "moving" in t)
    title = plain.catalog.set_index("video_id").loc[vid, "title"]
    history = [vid, "a scarlet dot moving up"]
    read = [t for t, _ in rewriting.explain(history)]
    assert read == [title, "a red dot drifting up"]  # the catalog's own title keeps its words
    assert _same(rewriting.recommend(history, k=5), plain.recommend([vid, "a red dot drifting up"], k=5))
    assert _same(rewriting.recommend(["a blue patch"], k=5), plain.recommend(["a blue patch"], k=5))


def test_synonyms_set_turns_rewriting_on_and_off(bundle: Path, syn_file: Path, plain, tmp_path: Path) -> None:
    from multimodal_rec.serving.recommender import Recommender

    rec = Recommender.load(bundle)
    rec.synonyms.set(syn_file)
    assert rec.info()["synonyms"]["rules"] == 6
    assert _same(rec.search("crimson", k=3, mode="vector"), plain.search("red", k=3, mode="vector"))
    bad = tmp_path / "bad.txt"
    bad.write_text("a, b\nc =>\n")
    with pytest.raises(UserError, match="line 2"):
        rec.synonyms.set(bad)
    assert rec.synonyms.info["rules"] == 6  # a bad file leaves the rules in use as they were
    rec.synonyms.set(None)
    assert _same(rec.search("crimson", k=3, mode="vector"), plain.search("crimson", k=3, mode="vector"))


def test_http_healthz_shows_the_file_and_search_rewrites(rewriting, plain, syn_file: Path) -> None:
    from fastapi.testclient import TestClient

    from multimodal_rec.serving.http import create_app

    client = TestClient(create_app(rewriting))
    health = client.get("/healthz").json()
    assert health["synonyms"]["path"] == str(syn_file.resolve()) and health["synonyms"]["rules"] == 6
    body = {"query": "scarlet triangle", "k": 3, "mode": "vector"}
    hits = client.post("/search", json=body).json()["hits"]
    assert [h["video_id"] for h in hits] == [h.video_id for h in plain.search("red triangle", k=3, mode="vector")]
    assert "synonyms" not in TestClient(create_app(plain)).get("/healthz").json()  # off: the answer of before


def test_cli_search_and_a_malformed_file(bundle: Path, syn_file: Path, tmp_path: Path, capsys) -> None:
    from multimodal_rec.cli import main

    args = ["search", "--bundle", str(bundle), "--mode", "vector", "-k", "3", "--json", "--quiet"]
    assert main([*args, "--synonyms", str(syn_file), "crimson circles"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["synonyms"]["sha256"] == hashlib.sha256(syn_file.read_bytes()).hexdigest()
    assert main([*args, "red circles"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert "synonyms" not in plain and got["hits"] == plain["hits"]
    bad = tmp_path / "bad.txt"
    bad.write_text("# header\nred, crimson\nblue =>\n")
    assert main([*args, "--synonyms", str(bad), "red"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{bad.resolve()}, line 3: a term is needed on both sides" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_run_server_applies_the_file_in_every_worker(
    bundle: Path, syn_file: Path, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    uvicorn = pytest.importorskip("uvicorn")
    from fastapi.testclient import TestClient

    from multimodal_rec.serving import http, prefork

    calls: list = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(app))
    # several workers: what each forked worker serves is make_app(rec) over the one load
    monkeypatch.setattr(prefork, "serve_forked", lambda rec, make_app, *a: calls.append(make_app(rec)))
    monkeypatch.setattr(http, "check_port_free", lambda host, port: None)
    http.run_server(str(bundle), workers=workers, synonyms=str(syn_file))
    (app,) = calls
    assert TestClient(app).get("/healthz").json()["synonyms"]["path"] == str(syn_file.resolve())
