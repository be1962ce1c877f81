"""Tables (catalog, captions, interactions), their validation, and leakage-free user-history examples."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from multimodal_rec.errors import UserError

LOG = logging.getLogger(__name__)

CATALOG_COLUMNS = ("video_id", "path")
CAPTION_COLUMNS = ("video_id", "caption")
INTERACTION_COLUMNS = ("user_id", "video_id", "timestamp", "text")


def read_table(path: str | Path, required: tuple[str, ...], what: str) -> pd.DataFrame:
    """Read a CSV or Parquet table and check its required columns; one-line errors for the user."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} file not found: {path}")
    # a file that cannot be read or parsed: OSError, or a ValueError (pandas' ParserError and EmptyDataError,
    # UnicodeDecodeError, pyarrow's ArrowInvalid); pyarrow's other errors for a parquet file it cannot handle
    unreadable: tuple[type[Exception], ...] = (OSError, ValueError)
    if path.suffix == ".parquet":
        import pyarrow as pa

        unreadable += (pa.ArrowException,)
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        else:  # ids and texts stay strings ("007" is not 7); other columns keep their inferred types
            text_cols = {c: str for c in ("video_id", "user_id", "path", "caption", "text", "title")}
            df = pd.read_csv(path, dtype=text_cols, keep_default_na=False, na_values=[""])
    except unreadable as e:
        raise UserError(f"cannot read {what} {path}: {(str(e).splitlines() or [type(e).__name__])[0]}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise UserError(f"{what} {path} lacks required column(s) {', '.join(missing)} (has: {', '.join(df.columns)})")
    return df


def read_catalog(path: str | Path) -> pd.DataFrame:
    """The catalog with ``path`` resolved against the catalog file's folder (``abs_path`` column)."""
    path = Path(path)
    df = read_table(path, CATALOG_COLUMNS, "catalog")
    if df.empty:
        raise UserError(f"catalog {path} has no rows")
    df["video_id"] = df["video_id"].astype(str)
    dup = df["video_id"][df["video_id"].duplicated()]
    if len(dup):
        raise UserError(f"catalog {path} repeats video_id {dup.iloc[0]!r}")
    base = path.resolve().parent
    df["abs_path"] = [str(p if Path(p).is_absolute() else base / p) for p in df["path"].astype(str)]
    return df.reset_index(drop=True)


def read_captions(path: str | Path) -> pd.DataFrame:
    df = read_table(path, CAPTION_COLUMNS, "captions")
    df["video_id"] = df["video_id"].astype(str)
    return df


def read_interactions(path: str | Path) -> pd.DataFrame:
    """Interactions sorted by user then time. ``text`` is what the user engaged with."""
    df = read_table(path, INTERACTION_COLUMNS, "interactions")
    df["user_id"] = df["user_id"].astype(str)
    df["video_id"] = df["video_id"].astype(str)
    try:
        df["timestamp"] = pd.to_numeric(df["timestamp"])
    except ValueError:
        raise UserError(f"interactions {path}: column timestamp must be numeric") from None
    return df.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)


@dataclass
class Dataset:
    """The three tables of a data directory (``mmrec synth`` writes one)."""

    root: Path
    catalog: pd.DataFrame
    captions: pd.DataFrame
    interactions: pd.DataFrame

    def split_ids(self, split: str) -> list[str]:
        """Video ids of a catalog split (``train``/``test``); every video is ``train`` without a split column."""
        if "split" not in self.catalog.columns:
            return list(self.catalog["video_id"]) if split == "train" else []
        return list(self.catalog.loc[self.catalog["split"] == split, "video_id"])


def load_dataset(root: str | Path) -> Dataset:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data directory not found: {root}")
    return Dataset(
        root=root,
        catalog=read_catalog(root / "catalog.csv"),
        captions=read_captions(root / "captions.csv"),
        interactions=read_interactions(root / "interactions.csv"),
    )


def training_events(interactions: pd.DataFrame, holdout_last: int = 1) -> pd.DataFrame:
    """Every event except each user's last ``holdout_last`` (the leave-last-out test targets)."""
    if holdout_last <= 0:
        return interactions
    pos_from_end = interactions.groupby("user_id").cumcount(ascending=False)
    return interactions[pos_from_end >= holdout_last]


def item_counts(interactions: pd.DataFrame, holdout_last: int = 1) -> dict[str, int]:
    """Training interactions per video id (the popularity prior's input)."""
    return {str(k): int(v) for k, v in training_events(interactions, holdout_last)["video_id"].value_counts().items()}


@dataclass
class HistoryExample:
    user_id: str
    history: list[str]  # texts of the events strictly before the target, oldest first
    history_ids: list[str]  # video ids of those events
    target: str  # video id of the next event


def history_examples(
    interactions: pd.DataFrame, max_history: int, min_history: int = 1, holdout_last: int = 1
) -> tuple[list[HistoryExample], list[HistoryExample]]:
    """(train, test) next-video examples per user; histories hold only events before their target.

    The last ``holdout_last`` events of each user are test targets (leave-last-out); every earlier event
    with at least ``min_history`` predecessors is a training target.
    """
    train: list[HistoryExample] = []
    test: list[HistoryExample] = []
    for user, g in interactions.groupby("user_id", sort=True):
        texts, vids = list(g["text"].astype(str)), list(g["video_id"])
        n = len(vids)
        for i in range(max(min_history, 1), n):
            ex = HistoryExample(
                str(user), texts[max(0, i - max_history) : i], vids[max(0, i - max_history) : i], vids[i]
            )
            (test if i >= n - holdout_last else train).append(ex)
    return train, test
