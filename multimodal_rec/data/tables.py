"""Tables (catalog, captions, interactions), their validation, and leakage-free user-history examples.

Accepted shapes (what a platform naturally exports):
- ``catalog``: ``video_id,path`` plus any metadata; text columns (``title``, ``description``, ``caption``, ``tags``)
  feed captions and interaction texts when those are not given.
- ``captions``: ``video_id,caption``; optional: without the file, every non-empty catalog text column of a video
  is one of its captions.
- ``interactions``: ``user_id,video_id,timestamp[,text]``. ``timestamp``: epoch seconds (int or float) or ISO-8601
  (naive means UTC), converted to epoch seconds. Without ``text`` (or where a cell is empty) the text is the video's
  catalog ``title``, else ``description``, else ``caption``, else its first caption. Rows naming videos not in the
  catalog are dropped with a warning and counted (``Dataset.unknown_video_rows``).
Every problem of a file is reported in one ``UserError`` (missing columns, empty ids, bad timestamps...).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from multimodal_rec.errors import UserError

LOG = logging.getLogger(__name__)

CATALOG_COLUMNS = ("video_id", "path")
CAPTION_COLUMNS = ("video_id", "caption")
INTERACTION_COLUMNS = ("user_id", "video_id", "timestamp")  # ``text`` is optional (filled from the catalog)
# catalog columns an interaction's text is taken from, first non-empty wins (then the video's first caption)
TEXT_FROM_CATALOG = ("title", "description", "caption")
# catalog columns that become captions when there is no captions file
CAPTIONS_FROM_CATALOG = ("title", "description", "caption", "tags")
TIMESTAMP_FORMATS = "epoch seconds (e.g. 1700000000 or 1700000000.5) or ISO-8601 (e.g. 2024-05-01T12:30:00Z)"
_STRING_COLUMNS = ("video_id", "user_id", "path", "caption", "text", "title", "description", "tags")
_SHOW = 5  # rows named per problem


def _load(path: Path, what: str) -> pd.DataFrame:
    """Read a CSV or Parquet file; one-line errors for the user."""
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
            return pd.read_parquet(path)
        # ids and texts stay strings ("007" is not 7); other columns keep their inferred types
        return pd.read_csv(path, dtype=dict.fromkeys(_STRING_COLUMNS, str), keep_default_na=False, na_values=[""])
    except unreadable as e:
        raise UserError(f"cannot read {what} {path}: {(str(e).splitlines() or [type(e).__name__])[0]}") from None


def _rows(path: Path, index: pd.Index | np.ndarray | list[int]) -> str:
    """The first few of ``index`` as the file's line numbers (CSV: header is line 1) or 1-based rows (Parquet)."""
    idx = [int(i) for i in index]
    base, word = (1, "row") if path.suffix == ".parquet" else (2, "line")
    shown = ", ".join(str(i + base) for i in idx[:_SHOW])
    more = f" and {len(idx) - _SHOW} more" if len(idx) > _SHOW else ""
    return f"{word}{'s' if len(idx) > 1 else ''} {shown}{more}"


def _missing_columns(df: pd.DataFrame, required: tuple[str, ...]) -> str | None:
    missing = [c for c in required if c not in df.columns]
    if not missing:
        return None
    return f"lacks required column(s) {', '.join(missing)} (has: {', '.join(map(str, df.columns))})"


def _empty(df: pd.DataFrame, column: str) -> pd.Series:
    """Cells of ``column`` that are missing or blank."""
    col = df[column]
    return col.isna() | (col.astype(str).str.strip() == "")


def _raise_problems(path: Path, what: str, problems: list[str]) -> None:
    """One UserError naming every problem of a file (one line)."""
    if len(problems) == 1:
        raise UserError(f"{what} {path} {problems[0]}")
    if problems:
        listed = "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))
        raise UserError(f"{what} {path} has {len(problems)} problems: {listed}")


def read_table(path: str | Path, required: tuple[str, ...], what: str) -> pd.DataFrame:
    """Read a CSV or Parquet table and check its required columns; one-line errors for the user."""
    path = Path(path)
    df = _load(path, what)
    _raise_problems(path, what, [p for p in [_missing_columns(df, required)] if p])
    return df


def read_catalog(path: str | Path) -> pd.DataFrame:
    """The catalog with ``path`` resolved against the catalog file's folder (``abs_path`` column; "" where ``path``
    is empty: the encoder serves such a row from its text columns, or skips it when it has no text)."""
    path = Path(path)
    df = _load(path, "catalog")
    missing = _missing_columns(df, CATALOG_COLUMNS)
    if missing:
        _raise_problems(path, "catalog", [missing])
    if df.empty:
        raise UserError(f"catalog {path} has no rows")
    problems = []
    empty = _empty(df, "video_id")
    if empty.any():
        problems.append(f"has an empty video_id at {_rows(path, df.index[empty])}")
    df["video_id"] = df["video_id"].astype(str)
    dup = df["video_id"].duplicated(keep=False) & ~empty
    if dup.any():
        first = df["video_id"][dup].iloc[0]
        problems.append(f"repeats video_id {first!r} ({dup.sum()} rows share an id, at {_rows(path, df.index[dup])})")
    _raise_problems(path, "catalog", problems)
    base = path.resolve().parent
    # an empty path stays "" (a video served from its catalog text alone, or skipped when it has none)
    df["abs_path"] = [
        "" if e else str(p if Path(p).is_absolute() else base / p)
        for p, e in zip(df["path"].astype(str), _empty(df, "path"), strict=True)
    ]
    return df.reset_index(drop=True)


def read_captions(path: str | Path) -> pd.DataFrame:
    """``video_id,caption`` rows; every problem of the file in one error."""
    path = Path(path)
    df = _load(path, "captions")
    problems = [p for p in [_missing_columns(df, CAPTION_COLUMNS)] if p]
    for col in CAPTION_COLUMNS:
        if col in df.columns and (bad := _empty(df, col)).any():
            problems.append(f"has an empty {col} at {_rows(path, df.index[bad])}")
    _raise_problems(path, "captions", problems)
    df["video_id"] = df["video_id"].astype(str)
    df["caption"] = df["caption"].astype(str)
    return df


def captions_from_catalog(catalog: pd.DataFrame) -> pd.DataFrame:
    """Captions built from the catalog's text columns (``CAPTIONS_FROM_CATALOG``): each non-empty cell is one."""
    cols = [c for c in CAPTIONS_FROM_CATALOG if c in catalog.columns]
    rows = [
        (vid, str(text).strip())
        for vid, *texts in zip(catalog["video_id"], *(catalog[c] for c in cols), strict=True)
        for text in texts
        if not pd.isna(text) and str(text).strip()
    ]
    if not rows:
        raise UserError(
            f"no captions: there is no captions.csv and the catalog has no text in {', '.join(CAPTIONS_FROM_CATALOG)}"
        )
    return pd.DataFrame(rows, columns=list(CAPTION_COLUMNS))


def parse_timestamps(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(epoch seconds, bad mask): numbers stay as they are; ISO-8601 strings (naive = UTC) become float seconds."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values, values.isna()
    as_number = pd.to_numeric(values, errors="coerce")
    text = values.where(as_number.isna())
    text = text.where(text.isna() | (text.astype(str).str.strip() != ""))
    when = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")
    seconds = (when - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    out = as_number.astype(float).where(as_number.notna(), seconds)
    return out, out.isna()


def _catalog_texts(catalog: pd.DataFrame, captions: pd.DataFrame | None) -> dict[str, str]:
    """Each video's interaction text: its first non-empty ``TEXT_FROM_CATALOG`` column, else its first caption."""
    texts: dict[str, str] = {}
    if captions is not None and len(captions):
        texts.update(captions.drop_duplicates("video_id").set_index("video_id")["caption"].astype(str).to_dict())
    for col in reversed(TEXT_FROM_CATALOG):  # earlier columns overwrite later ones
        if col in catalog.columns:
            for vid, t in zip(catalog["video_id"], catalog[col], strict=True):
                if not pd.isna(t) and str(t).strip():
                    texts[str(vid)] = str(t)
    return texts


def _read_interactions(
    path: Path, catalog: pd.DataFrame | None, captions: pd.DataFrame | None
) -> tuple[pd.DataFrame, int]:
    """(interactions, rows dropped for naming videos not in ``catalog``); every problem of the file in one error."""
    df = _load(path, "interactions")
    problems = [p for p in [_missing_columns(df, INTERACTION_COLUMNS)] if p]
    for col in ("user_id", "video_id"):
        if col in df.columns and (bad := _empty(df, col)).any():
            problems.append(f"has an empty {col} at {_rows(path, df.index[bad])}")
    if "timestamp" in df.columns:
        seconds, bad = parse_timestamps(df["timestamp"])
        if bad.any():
            shown = ", ".join(repr(v) for v in df["timestamp"][bad].head(3))
            problems.append(
                f"has timestamps that are neither epoch seconds nor ISO-8601 at {_rows(path, df.index[bad])} "
                f"({shown}); accepted: {TIMESTAMP_FORMATS}"
            )
        df["timestamp"] = seconds
    _raise_problems(path, "interactions", problems)
    df["user_id"] = df["user_id"].astype(str)
    df["video_id"] = df["video_id"].astype(str)
    unknown = 0
    if catalog is not None:
        known = df["video_id"].isin(set(catalog["video_id"].astype(str)))
        unknown = int((~known).sum())
        if unknown == len(df) and len(df):
            raise UserError(f"interactions {path}: none of its {len(df)} rows names a video of the catalog")
        if unknown:
            top = df["video_id"][~known].value_counts()
            LOG.warning(
                "interactions %s: dropped %d of %d rows naming %d video id(s) not in the catalog (e.g. %s)",
                path, unknown, len(df), len(top), ", ".join(f"{v!r}: {n}" for v, n in top.head(_SHOW).items()),
            )  # fmt: skip
            df = df[known]
    df = _fill_text(path, df, catalog, captions)
    return df.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True), unknown


def _fill_text(
    path: Path, df: pd.DataFrame, catalog: pd.DataFrame | None, captions: pd.DataFrame | None
) -> pd.DataFrame:
    """``text`` where absent or empty: the video's catalog text (``_catalog_texts``); refuse rows left without."""
    need = _empty(df, "text") if "text" in df.columns else pd.Series(True, index=df.index)
    if not need.any():
        df = df.copy()
        df["text"] = df["text"].astype(str)
        return df
    if catalog is None:
        raise UserError(f"interactions {path} has no text at {_rows(path, df.index[need])} and no catalog to fill it")
    texts = _catalog_texts(catalog, captions)
    filled = df["video_id"].map(texts)
    df = df.assign(text=df["text"].where(~need, filled) if "text" in df.columns else filled)
    still = df["text"].isna()
    if still.any():
        vids = ", ".join(repr(v) for v in df["video_id"][still].unique()[:_SHOW])
        raise UserError(
            f"interactions {path} has no text at {_rows(path, df.index[still])} and the catalog has none for "
            f"video(s) {vids} (no {', '.join(TEXT_FROM_CATALOG)} and no caption): add a text column or titles"
        )
    df["text"] = df["text"].astype(str)
    return df


def read_interactions(
    path: str | Path, catalog: pd.DataFrame | None = None, captions: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Interactions sorted by user then time (epoch seconds). ``text`` is what the user engaged with.

    With ``catalog``: rows naming unknown videos are dropped (warning) and missing texts come from the catalog.
    """
    return _read_interactions(Path(path), catalog, captions)[0]


@dataclass
class Dataset:
    """The three tables of a data directory (``mmrec synth`` writes one)."""

    root: Path
    catalog: pd.DataFrame
    captions: pd.DataFrame
    interactions: pd.DataFrame
    unknown_video_rows: int = 0  # interactions rows dropped for naming a video not in the catalog
    captions_from_catalog: bool = False  # no captions file: captions were built from the catalog's text columns

    def split_ids(self, split: str) -> list[str]:
        """Video ids of a catalog split (``train``/``test``); every video is ``train`` without a split column."""
        if "split" not in self.catalog.columns:
            return list(self.catalog["video_id"]) if split == "train" else []
        return list(self.catalog.loc[self.catalog["split"] == split, "video_id"])


def load_dataset(root: str | Path) -> Dataset:
    """The tables of a data directory; ``captions.csv`` is optional when the catalog has text columns."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data directory not found: {root}")
    catalog = read_catalog(root / "catalog.csv")
    cap_path = root / "captions.csv"
    built = not cap_path.exists()
    if built:
        captions = captions_from_catalog(catalog)
        LOG.info("no %s: %d captions built from the catalog's text columns", cap_path, len(captions))
    else:
        captions = read_captions(cap_path)
    interactions, unknown = _read_interactions(root / "interactions.csv", catalog, captions)
    return Dataset(root, catalog, captions, interactions, unknown, built)


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
