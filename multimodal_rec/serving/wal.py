"""The write-ahead log of live catalog changes: every acknowledged add / remove is on disk before the answer.

One file beside the bundle directory, ``<bundle>.wal`` (not inside it: a snapshot replaces the bundle directory by a
rename, and the directory's manifest checksums exactly the files of one version). It holds a header (magic + the
bundle's ``wal_seq`` when the log was started) and records ``<u32 length><u32 crc32(length + payload)><payload>``,
the payload one JSON object ``{"seq": n, "op": "add", "videos": [{"video_id", "embedding", "metadata"}]}`` or
``{"seq": n, "op": "remove", "video_ids": [...]}``: one record per call, so a batch is applied whole or not at all.

Appends are written with one ``write`` and ``os.fsync``ed before :meth:`WriteAheadLog.append` returns (the
directory is fsynced when the file is created). :func:`read_log` returns every complete record in order; a torn or
checksum-failing *last* record (a crash mid-append) is dropped, the file truncated to the last good record; a bad
record that other good records follow (a damaged or edited log) is a one-line UserError, and nothing is applied.
Sequence numbers are consecutive; the bundle's manifest records ``wal_seq``, the last record a snapshot holds, so a
replay skips older records (a crash between a snapshot's rename and the log's truncation loses nothing, doubles
nothing). :meth:`WriteAheadLog.restart` truncates atomically: a new file with a new header, renamed over the old.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from multimodal_rec.errors import UserError

LOG = logging.getLogger(__name__)
MAGIC = b"MMRECWAL1\n"
HEADER = struct.Struct("<Q")  # after MAGIC: the wal_seq of the bundle the log was started over
RECORD = struct.Struct("<II")  # length of the payload, crc32 of (length bytes + payload)
HEADER_LEN = len(MAGIC) + HEADER.size
MAX_RECORD = 1 << 28  # 256 MiB: a longer length field is damage, not a record
SEQ_FIELD = "wal_seq"  # bundle.json: the last log record a snapshot holds
_START = b'{"seq":'  # every payload starts so (json.dumps of a dict whose first key is seq): a resync hint


def wal_path(bundle: str | Path) -> Path:
    """``<bundle>.wal``: the log beside the bundle directory."""
    p = Path(bundle).resolve()
    return p.with_name(p.name + ".wal")


def encode_record(record: dict[str, Any]) -> bytes:
    """One record's bytes: header (length, crc32) + compact JSON payload (``seq`` first)."""
    payload = json.dumps({"seq": record["seq"], **record}, separators=(",", ":"), allow_nan=False).encode()
    head = struct.pack("<I", len(payload))
    return head + struct.pack("<I", zlib.crc32(head + payload)) + payload


def _parse_at(buf: bytes, pos: int) -> tuple[dict[str, Any] | None, int]:
    """(the record at ``pos`` or None if it is incomplete or damaged, the offset after it)."""
    if pos + RECORD.size > len(buf):
        return None, len(buf)
    n, crc = RECORD.unpack_from(buf, pos)
    end = pos + RECORD.size + n
    if n > MAX_RECORD or end > len(buf):
        return None, len(buf)
    payload = buf[pos + RECORD.size : end]
    if zlib.crc32(buf[pos : pos + 4] + payload) != crc:
        return None, end
    try:
        rec = json.loads(payload)
    except ValueError:
        return None, end
    if not isinstance(rec, dict) or not isinstance(rec.get("seq"), int) or rec.get("op") not in ("add", "remove"):
        return None, end
    return rec, end


def _good_record_after(buf: bytes, pos: int) -> int | None:
    """The offset of a valid record after ``pos`` (a damaged record in the middle), or None (a torn tail)."""
    at = buf.find(_START, pos + 1)
    while at != -1:
        start = at - RECORD.size
        if start > pos and _parse_at(buf, start)[0] is not None:
            return start
        at = buf.find(_START, at + 1)
    return None


def read_log(path: Path, repair: bool = True) -> tuple[int, list[dict[str, Any]]]:
    """``(base, records)`` of the log at ``path`` (none: ``(0, [])``); a torn last record is dropped and, with
    ``repair``, cut off the file. UserError for a file that is not a log, a damaged middle or broken sequence."""
    if not path.exists():
        return 0, []
    buf = path.read_bytes()
    if len(buf) < HEADER_LEN:
        if not MAGIC.startswith(buf[: len(MAGIC)]):
            raise UserError(f"{path} is not a write-ahead log of multimodal_rec (bad header)")
        LOG.warning("write-ahead log %s has a torn header (a crash while it was created): starting it again", path)
        return -1, []  # the caller writes a new header
    if not buf.startswith(MAGIC):
        raise UserError(f"{path} is not a write-ahead log of multimodal_rec (bad header)")
    (base,) = HEADER.unpack_from(buf, len(MAGIC))
    records: list[dict[str, Any]] = []
    pos = HEADER_LEN
    while pos < len(buf):
        rec, end = _parse_at(buf, pos)
        if rec is None:
            later = _good_record_after(buf, pos)
            if later is not None:
                raise UserError(
                    f"write-ahead log {path} is damaged: the record at byte {pos} fails its checksum but valid records "
                    f"follow (at byte {later}); the log was modified: restore it or the bundle from a backup"
                )
            LOG.warning(
                "write-ahead log %s: dropping a torn last record at byte %d (%d bytes)", path, pos, len(buf) - pos
            )
            if repair:
                with path.open("r+b") as f:
                    f.truncate(pos)
                    f.flush()
                    os.fsync(f.fileno())
            break
        want = (records[-1]["seq"] if records else base) + 1
        if rec["seq"] != want:
            raise UserError(f"write-ahead log {path} is damaged: record at byte {pos} has seq {rec['seq']}, not {want}")
        records.append(rec)
        pos = end
    return base, records


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteAheadLog:
    """An open log: :meth:`append` (durable on return), :meth:`restart` (atomic truncation after a snapshot).

    Not thread-safe on its own: the one writer (``serving.live.LiveCatalog``) serialises calls under its lock.
    """

    def __init__(self, path: Path, bundle_seq: int) -> None:
        """Open (or create) the log at ``path`` over a bundle whose snapshot holds records up to ``bundle_seq``;
        :attr:`pending` are the records to replay (newer than the bundle)."""
        self.path = path
        base, records = read_log(path)
        if base < 0 or not path.exists():
            base, records = bundle_seq, []
            self._write_fresh(bundle_seq)
        if base > bundle_seq:
            raise UserError(
                f"write-ahead log {path} starts after record {base} but the bundle holds records up to {bundle_seq}: "
                "the bundle is older than its log (restored alone?); restore the bundle and its .wal together"
            )
        self.pending = [r for r in records if r["seq"] > bundle_seq]
        last = records[-1]["seq"] if records else base
        if self.pending and self.pending[0]["seq"] != bundle_seq + 1:
            raise UserError(f"write-ahead log {path} misses records {bundle_seq + 1}..{self.pending[0]['seq'] - 1}")
        self.seq = max(last, bundle_seq)
        self._f = path.open("ab")

    def _write_fresh(self, base: int) -> None:
        """A new log holding only its header, atomically in place of any old one (temp file, fsync, rename)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("wb") as f:
            f.write(MAGIC + HEADER.pack(base))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)

    def append(self, record: dict[str, Any]) -> int:
        """Write ``record`` with the next sequence number and fsync it; returns that number. On an OSError the
        record may be partly written: the file is cut back to where it was, and the error raised."""
        seq = self.seq + 1
        data = encode_record({**record, "seq": seq})
        at = self._f.tell()
        try:
            self._f.write(data)
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError:
            with contextlib.suppress(OSError):  # else a torn tail, dropped on the next open anyway
                self._f.truncate(at)
            raise
        self.seq = seq
        return seq

    def restart(self, base: int) -> None:
        """Truncate the log after a snapshot holding every record up to ``base`` (atomic: a crash leaves the old
        log, whose records the snapshot's ``wal_seq`` makes a replay skip, or the new one)."""
        self._f.close()
        self._write_fresh(base)
        self._f = self.path.open("ab")
        self.seq = max(self.seq, base)

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record the file holds now (for tests and tools)."""
        return iter(read_log(self.path, repair=False)[1])

    def close(self) -> None:
        self._f.close()
