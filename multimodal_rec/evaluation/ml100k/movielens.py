"""MovieLens-100k, read from the copy the ``recbole`` package ships, in this project's table format.

The data stays inside the installed package (its licence forbids redistribution, so nothing is copied into
the repository). ``recbole`` is never imported (its import breaks on current numpy): only its files are read.
Install it with ``pip install --no-deps recbole``.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import re
from pathlib import Path

import pandas as pd

from multimodal_rec.errors import UserError

LOG = logging.getLogger(__name__)

MISSING_MSG = "MovieLens-100k needs the recbole package: pip install --no-deps recbole"
INTER_FILE = "ml-100k.inter"
ITEM_FILE = "ml-100k.item"
# recbole's atomic-file headers are "name:type"; these are the names each file must have.
INTER_FIELDS = ("user_id", "item_id", "rating", "timestamp")
ITEM_FIELDS = ("item_id", "movie_title", "release_year", "class")
TITLE_YEAR = re.compile(r"^(.*\S)\s*\((\d{4})\)$")
UNKNOWN = {"unknown", "unkonwn"}  # item 267 is spelled "unkonwn" in recbole's copy


def find_ml100k() -> Path:
    """The ``ml-100k`` folder inside the installed recbole package (found without importing recbole)."""
    try:
        spec = importlib.util.find_spec("recbole")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        folder = Path(loc) / "dataset_example" / "ml-100k"
        if (folder / INTER_FILE).is_file() and (folder / ITEM_FILE).is_file():
            return folder
    raise UserError(MISSING_MSG)


def _read_atomic(path: Path, fields: tuple[str, ...]) -> pd.DataFrame:
    """A recbole atomic file (tab-separated, ``name:type`` header) as strings, columns renamed to ``fields``."""
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE, encoding="utf-8")
    except (OSError, ValueError) as e:  # unreadable file, or pandas' parse / decode error
        raise UserError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
    names = [c.split(":", 1)[0] for c in df.columns]
    missing = [f for f in fields if f not in names]
    if missing:
        raise UserError(f"{path} lacks field(s) {', '.join(missing)} (has: {', '.join(df.columns)})")
    df.columns = names
    return df[list(fields)]


def _item_text(title: str, year: int | None, genres: list[str]) -> str:
    """``"Toy Story (1995). Genres: Animation, Children's, Comedy"``; year and genres left out when unknown."""
    text = f"{title} ({year})" if year is not None else title
    return f"{text}. Genres: {', '.join(genres)}" if genres else text


def load_ml100k(root: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(items, interactions) of MovieLens-100k; ``root`` is the ``ml-100k`` folder (default: :func:`find_ml100k`).

    items: ``video_id`` (item id as str), ``title``, ``year`` (nullable Int64), ``genres`` ("|"-joined),
    ``text`` (title + year + genres, what the text tower reads).
    interactions: ``user_id``, ``video_id`` (str), ``timestamp`` (int), ``text`` (the item's text), ``rating``
    (int 1-5, extra); sorted by user then timestamp, ties broken by item id (numeric order of the ids).
    """
    root = Path(root) if root is not None else find_ml100k()
    raw_items = _read_atomic(root / ITEM_FILE, ITEM_FIELDS)
    raw_inter = _read_atomic(root / INTER_FILE, INTER_FIELDS)

    titles, years, genres, texts = [], [], [], []
    for title, year, cls in zip(raw_items["movie_title"], raw_items["release_year"], raw_items["class"], strict=True):
        title = "unknown" if title.strip() in UNKNOWN else title.strip()
        y = int(year) if year.strip().isdigit() else None
        m = None if y is not None else TITLE_YEAR.match(title)  # item 1412: "... (1995)", year field "V"
        if m:
            title, y = m.group(1), int(m.group(2))
        g = [t for t in cls.split() if t not in UNKNOWN]
        titles.append(title)
        years.append(y)
        genres.append("|".join(g))
        texts.append(_item_text(title, y, g))
    items = pd.DataFrame(
        {
            "video_id": raw_items["item_id"].str.strip(),
            "title": titles,
            "year": pd.array(years, dtype="Int64"),
            "genres": genres,
            "text": texts,
        }
    )
    if items["video_id"].duplicated().any():
        raise UserError(f"{root / ITEM_FILE} repeats item ids")

    inter = pd.DataFrame(
        {
            "user_id": raw_inter["user_id"].str.strip(),
            "video_id": raw_inter["item_id"].str.strip(),
            "timestamp": pd.to_numeric(raw_inter["timestamp"]).astype("int64"),
            "rating": pd.to_numeric(raw_inter["rating"]).astype("int64"),
        }
    )
    unknown = ~inter["video_id"].isin(items["video_id"])
    if unknown.any():
        raise UserError(f"{root / INTER_FILE}: {int(unknown.sum())} interactions name items missing from {ITEM_FILE}")
    inter["text"] = inter["video_id"].map(dict(zip(items["video_id"], items["text"], strict=True)))
    # Numeric ids sort naturally ("2" before "10"); non-numeric ids (not in ml-100k) fall back to string order.
    keys = {c: pd.to_numeric(inter[c], errors="coerce") for c in ("user_id", "video_id")}
    order = pd.DataFrame(
        {
            "u": keys["user_id"] if keys["user_id"].notna().all() else inter["user_id"],
            "t": inter["timestamp"],
            "i": keys["video_id"] if keys["video_id"].notna().all() else inter["video_id"],
        }
    ).sort_values(["u", "t", "i"], kind="stable")
    inter = inter.loc[order.index, ["user_id", "video_id", "timestamp", "text", "rating"]].reset_index(drop=True)
    LOG.info("ml-100k: %d users, %d items, %d interactions", inter["user_id"].nunique(), len(items), len(inter))
    return items, inter
