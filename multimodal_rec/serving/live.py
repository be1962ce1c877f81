"""A writable served catalog: adds and removes go to the write-ahead log first, then into the Recommender.

:meth:`LiveCatalog.open` loads a bundle, takes the bundle's writer lock (``<bundle>.wal.lock``: one writing process
per bundle), recovers from a snapshot a crash interrupted, and replays ``<bundle>.wal`` (:mod:`.wal`) over the
bundle. :meth:`add` / :meth:`remove` check everything, append one fsynced log record, then change the in-memory
catalog: when they return, the change survives a crash. :meth:`snapshot` writes the catalog as a new version of the
bundle at its own path (``Recommender.save``: atomic), fsyncs it, then truncates the log. One writer at a time (a
lock); searches keep running meanwhile.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import re
import shutil
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multimodal_rec.bundle import MANIFEST
from multimodal_rec.errors import UserError
from multimodal_rec.serving.recommender import Recommender
from multimodal_rec.serving.results import AddResult
from multimodal_rec.serving.validation import check_embeddings, new_videos
from multimodal_rec.serving.wal import SEQ_FIELD, WriteAheadLog, fsync_dir, read_log, wal_path

LOG = logging.getLogger(__name__)
MAX_ID_CHARS = 200
_BAD_ID = re.compile(r"[/\\\x00-\x1f\x7f]")  # path separators and control characters


def check_video_id(vid: Any) -> str:
    """A video id a client may create: a non-blank string of at most 200 characters, without path separators or
    control characters (ids end up in URLs, file names of exports and logs)."""
    if not isinstance(vid, str) or not vid.strip():
        raise UserError("video_id must be a non-empty string")
    if len(vid) > MAX_ID_CHARS:
        raise UserError(f"video_id must have at most {MAX_ID_CHARS} characters")
    if _BAD_ID.search(vid) or vid in (".", ".."):
        raise UserError(f"video_id {vid[:60]!r} contains a path separator or a control character")
    return vid


def recover_bundle(path: Path) -> None:
    """Finish or undo a bundle write a crash interrupted (``bundle.write_bundle`` renames the old version aside, then
    the new one in): with no bundle at ``path``, the version set aside comes back (the log still holds every record
    since it); leftover temporary and set-aside directories are removed. Call it holding the writer lock."""
    aside = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not path.exists() and aside and (aside[-1] / MANIFEST).is_file():
        LOG.warning("bundle %s was being replaced when the process stopped: restoring the previous version", path)
        aside[-1].rename(path)
        fsync_dir(path.parent)
        aside = aside[:-1]
    if path.exists():
        for stale in [*aside, *path.parent.glob(f".{path.name}.tmp-*")]:
            LOG.info("removing %s, left by an interrupted bundle write", stale)
            shutil.rmtree(stale, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` and its parent: the snapshot is on disk before the log goes."""
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            with p.open("rb") as f:
                os.fsync(f.fileno())
    for d in [*(p for p in root.rglob("*") if p.is_dir()), root, root.parent]:
        fsync_dir(d)


def load_replayed(bundle: str | Path, **load: Any) -> Recommender:
    """A read-only load that serves every logged write: the bundle with its log's newer records applied in memory
    (the log is neither locked nor changed: for readers, e.g. worker processes while no process writes)."""
    path = Path(bundle).resolve()
    rec = Recommender.load(path, **load)
    seq = int(rec.manifest.get(SEQ_FIELD, 0))
    records = [r for r in read_log(wal_path(path), repair=False)[1] if r["seq"] > seq]
    for record in records:
        _apply(rec, record)
    if records:
        LOG.info("replayed %d log records over %s (read-only)", len(records), path)
    return rec


class LiveCatalog:
    """A Recommender whose catalog changes are durable (``rec`` answers the reads; change it only through here)."""

    def __init__(self, rec: Recommender, wal: WriteAheadLog, lock_file: Any) -> None:
        self.rec, self.wal = rec, wal
        self._lock_file = lock_file  # holds the bundle's writer lock (flock) while open
        self._write = threading.Lock()

    @classmethod
    def open(cls, bundle: str | Path, **load: Any) -> LiveCatalog:
        """Load ``bundle`` for writing (``load``: ``Recommender.load``'s keywords) and replay its log over it.
        UserError when another process writes to it, or its log is damaged."""
        path = Path(bundle).resolve()
        lock_file = path.with_name(path.name + ".wal.lock").open("a")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise UserError(f"bundle {path} is open for writing in another process (one writer per bundle)") from None
        try:
            recover_bundle(path)
            rec = Recommender.load(path, **load)
            wal = WriteAheadLog(wal_path(path), int(rec.manifest.get(SEQ_FIELD, 0)))
            for record in wal.pending:
                _apply(rec, record)
        except BaseException:
            lock_file.close()
            raise
        if wal.pending:
            LOG.info("replayed %d log records over %s: %d videos served", len(wal.pending), path, len(rec))
        wal.pending = []
        return cls(rec, wal, lock_file)

    def add(self, videos: Sequence[Mapping[str, Any]]) -> AddResult:
        """Add ``videos`` (each ``{"video_id", "embedding", "metadata"}``), durably: ids already served are skipped
        with their reason, the rest logged in one record and served. UserError (nothing changes) on a bad video."""
        with self._write:
            fresh, skipped, seen = [], [], set()
            for v in videos:
                vid = check_video_id(v.get("video_id"))
                if vid in seen:
                    raise UserError(f"videos to add repeat video_id {vid!r}")
                seen.add(vid)
                if vid in self.rec.row_of:
                    skipped.append(
                        {"video_id": vid, "reason": "already in the catalog (remove it first to replace it)"}
                    )
                    continue
                fresh.append(_checked_video(v, vid))
            fresh, unread = _encode_paths(self.rec, fresh)  # videos given by path: decoded and encoded first
            skipped += unread
            if not fresh:
                return AddResult([], skipped)
            _frame_and_vectors(self.rec, fresh)  # every check add_videos makes, before anything is logged
            self.wal.append({"op": "add", "videos": fresh})
            result = _apply(self.rec, {"op": "add", "videos": fresh})
            return AddResult(list(result.added), skipped)

    def remove(self, ids: Iterable[str]) -> int:
        """Stop serving ``ids``, durably (UserError, nothing changes, when one is not served)."""
        with self._write:
            ids = list(dict.fromkeys(str(v) for v in ids))
            unknown = next((v for v in ids if v not in self.rec.row_of), None)
            if unknown is not None:
                raise UserError(f"cannot remove {unknown[:100]!r}: no such video id in the catalog")
            if not ids:
                return 0
            self.wal.append({"op": "remove", "video_ids": ids})
            return _apply(self.rec, {"op": "remove", "video_ids": ids})

    def snapshot(self) -> Path:
        """Write the catalog as a new version of the bundle (atomically, at its path), then empty the log."""
        with self._write:
            seq = self.wal.seq
            self.rec.manifest = {**self.rec.manifest, SEQ_FIELD: seq}  # the save records which records it holds
            out = self.rec.save(self.rec.path)
            _fsync_tree(out)
            self.wal.restart(seq)
            LOG.info("snapshot of %d videos at %s (log records up to %d)", len(self.rec), out, seq)
            return out

    def close(self) -> None:
        """Close the log and release the writer lock."""
        self.wal.close()
        self._lock_file.close()


def _checked_video(v: Mapping[str, Any], vid: str) -> dict[str, Any]:
    """The log form of a video to add: its id, its embedding (finite floats) and metadata (a JSON object)."""
    emb, meta, path = v.get("embedding"), v.get("metadata") or {}, v.get("path")
    if (emb is None) == (path is None):
        raise UserError(f"video {vid!r} needs an embedding or a path the server can read (one of them)")
    if not isinstance(meta, Mapping) or "video_id" in meta:
        raise UserError(f"video {vid!r}: metadata must be an object of catalog columns (without video_id)")
    if path is not None:
        if not isinstance(path, str) or not path.strip():
            raise UserError(f"video {vid!r}: path must be a non-empty string")
        return {"video_id": vid, "path": path, "metadata": _checked_metadata(vid, meta)}
    if not isinstance(emb, list | tuple | np.ndarray) or not all(isinstance(x, int | float) for x in emb):
        raise UserError(f"video {vid!r}: embedding must be a list of numbers")
    if not all(math.isfinite(x) for x in emb):
        raise UserError(f"video {vid!r}: embedding must be finite (no NaN or infinity)")
    return {"video_id": vid, "embedding": [float(x) for x in emb], "metadata": _checked_metadata(vid, meta)}


def _checked_metadata(vid: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    scalar = str | int | float | bool | None
    bad = next((k for k, x in meta.items() if not isinstance(x, scalar) or x != x or x in (math.inf, -math.inf)), None)
    if bad is not None:
        what = "a string, a finite number, true/false or null"
        raise UserError(f"video {vid!r}: metadata {str(bad)[:60]!r} must be {what}")
    return dict(meta)


def _encode_paths(rec: Recommender, videos: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """``videos`` with every one given by ``path`` decoded and encoded as ``mmrec encode`` made the bundle (its
    frames and text blended into one item vector: the log holds the vector, so replay never decodes again), and the
    ones that could not be read, with their reason. A video added this way is served as one segment."""
    from multimodal_rec.bundle import encode_config_of

    todo = [v for v in videos if "path" in v]
    if not todo:
        return videos, []
    rows = [{"video_id": v["video_id"], **v["metadata"], "abs_path": str(Path(v["path"]).expanduser())} for v in todo]
    vectors, errors = rec.encode_items(pd.DataFrame(rows), encode_config_of(rec.manifest))
    encoded = iter(vectors.item)
    item = {v["video_id"]: None if e else next(encoded) for v, e in zip(todo, errors, strict=True)}
    out = [v if "path" not in v else _with_vector(v, item[v["video_id"]]) for v in videos]
    skipped = [{"video_id": v["video_id"], "reason": e} for v, e in zip(todo, errors, strict=True) if e]
    return [v for v in out if v is not None], skipped


def _with_vector(v: dict[str, Any], vector: np.ndarray | None) -> dict[str, Any] | None:
    if vector is None:
        return None
    return {"video_id": v["video_id"], "embedding": [float(x) for x in vector], "metadata": v["metadata"]}


def _frame_and_vectors(rec: Recommender, videos: list[dict[str, Any]]) -> tuple[pd.DataFrame, np.ndarray]:
    """The catalog rows and unit vectors of ``videos``, checked as ``add_videos`` checks them."""
    df = pd.DataFrame([{"video_id": v["video_id"], **v["metadata"]} for v in videos])
    df = new_videos(df, rec.catalog, need_paths=False)
    d = int(rec.embeddings.shape[1])
    bad = next((v["video_id"] for v in videos if len(v["embedding"]) != d), None)
    if bad is not None:
        raise UserError(f"video {bad!r}: embedding must have {d} numbers (the bundle's dimension)")
    return df, check_embeddings(np.asarray([v["embedding"] for v in videos], np.float32), len(videos), d)


def _apply(rec: Recommender, record: Mapping[str, Any]) -> Any:
    """Apply one log record to ``rec`` (the same code on the live path and on replay)."""
    if record["op"] == "remove":
        return rec.remove_videos(record["video_ids"])
    df, xb = _frame_and_vectors(rec, list(record["videos"]))
    return rec.add_videos(df, embeddings=xb)
