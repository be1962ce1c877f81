"""The write-ahead log (issue 19): records survive as written, a torn tail is dropped, a damaged middle refused."""

from __future__ import annotations

import tempfile
from itertools import accumulate
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from multimodal_rec.errors import UserError
from multimodal_rec.serving.wal import HEADER_LEN, WriteAheadLog, encode_record, read_log

ids = st.sampled_from([f"v{i}" for i in range(6)])
ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), ids, st.lists(st.floats(-1, 1, width=32), min_size=2, max_size=2)),
        st.tuples(st.just("remove"), ids, st.none()),
    ),
    max_size=12,
)


def _record(op: str, vid: str, emb: list[float] | None) -> dict:
    if op == "add":
        return {"op": "add", "videos": [{"video_id": vid, "embedding": emb, "metadata": {"title": f"t {vid}"}}]}
    return {"op": "remove", "video_ids": [vid]}


def _model(records: list[dict]) -> dict[str, list[float]]:
    """The catalog a sequence of records describes: a plain dict id -> embedding (add of a served id: skipped)."""
    state: dict[str, list[float]] = {}
    for r in records:
        if r["op"] == "add":
            for v in r["videos"]:
                state.setdefault(v["video_id"], v["embedding"])
        else:
            for vid in r["video_ids"]:
                state.pop(vid, None)
    return state


def _write(path: Path, seq: ops) -> list[dict]:
    wal = WriteAheadLog(path, 0)
    written = [_record(*o) for o in seq]
    for r in written:
        wal.append(r)
    wal.close()
    return written


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seq=ops, data=st.data())
def test_any_prefix_replays_its_complete_records(seq, data) -> None:
    """Cut the log at any byte: a replay gives exactly the records that were complete before the cut, in order."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "b.wal"
        written = _write(path, seq)
        full = path.read_bytes()
        cut_at = data.draw(st.integers(HEADER_LEN, len(full)))
        part = Path(d) / "p.wal"
        part.write_bytes(full[:cut_at])
        _, got = read_log(part)
        assert [g["seq"] for g in got] == list(range(1, len(got) + 1))
        assert _model(got) == _model(written[: len(got)])
        assert len(part.read_bytes()) <= cut_at  # the torn tail is cut off the file
        ends = list(
            accumulate((len(encode_record({**r, "seq": i + 1})) for i, r in enumerate(written)), initial=HEADER_LEN)
        )
        assert len(got) == sum(e <= cut_at for e in ends[1:])  # every record complete before the cut, no other
        whole = WriteAheadLog(part, 0)  # reopens, appends after the repaired tail
        whole.append(_record("remove", "v0", None))
        whole.close()
        assert [r["seq"] for r in read_log(part)[1]] == list(range(1, len(got) + 2))


@settings(max_examples=30, deadline=None)
@given(seq=ops)
def test_log_replays_to_the_plain_python_model(seq) -> None:
    """Random add/remove sequences: the replayed records describe the same catalog as the ones appended."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "b.wal"
        written = _write(path, seq)
        base, got = read_log(path)
        assert base == 0 and [{k: v for k, v in g.items() if k != "seq"} for g in got] == written
        assert _model(got) == _model(written)


def test_torn_or_bad_last_record_is_dropped_and_cut(tmp_path: Path) -> None:
    path = tmp_path / "b.wal"
    _write(path, [("add", "v1", [0.5, 0.5]), ("remove", "v1", None)])
    full = path.read_bytes()
    path.write_bytes(full[:-3])  # torn
    assert [r["op"] for r in read_log(path)[1]] == ["add"]
    first_end = len(path.read_bytes())
    path.write_bytes(full[:-1] + bytes([full[-1] ^ 0xFF]))  # complete but its checksum fails
    assert [r["op"] for r in read_log(path)[1]] == ["add"] and len(path.read_bytes()) == first_end


def test_damaged_middle_record_is_refused(tmp_path: Path) -> None:
    """A flipped byte in a record that valid records follow: an edited log, one line, nothing replayed."""
    path = tmp_path / "b.wal"
    _write(path, [("add", "v1", [0.5, 0.5]), ("add", "v2", [0.1, 0.2]), ("remove", "v1", None)])
    data = bytearray(path.read_bytes())
    data[HEADER_LEN + 20] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"damaged.*valid records follow"):
        read_log(path)
    with pytest.raises(UserError, match="damaged"):
        WriteAheadLog(path, 0)


def test_sequence_skips_what_the_bundle_holds_and_refuses_gaps(tmp_path: Path) -> None:
    path = tmp_path / "b.wal"
    _write(path, [("add", "v1", [0.5, 0.5]), ("add", "v2", [0.1, 0.2]), ("remove", "v1", None)])
    assert [r["seq"] for r in WriteAheadLog(path, 2).pending] == [3]  # a snapshot held 1..2: replay only 3
    wal = WriteAheadLog(path, 3)
    assert wal.pending == [] and wal.seq == 3
    wal.restart(3)  # truncation: header only, numbering goes on
    assert read_log(path) == (3, []) and wal.append(_record("remove", "v2", None)) == 4
    wal.close()
    with pytest.raises(UserError, match="older than its log"):
        WriteAheadLog(path, 1)  # a bundle restored from an older backup, alone


def test_not_a_log_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "b.wal"
    path.write_bytes(b"hello world, not a log at all")
    with pytest.raises(UserError, match="not a write-ahead log"):
        read_log(path)
