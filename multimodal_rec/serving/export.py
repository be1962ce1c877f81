"""Export a bundle's vectors to a vector database (``mmrec export``): Qdrant.

For catalogs past what one machine's FAISS index serves well (see ``docs/scaling.md``), the database takes over
storage, replication and filtering; our towers still make the query vectors (``Recommender.text_queries``).
Each point is one video: id = the bundle's row number, vector = its embedding (inner product = our cosine),
payload = ``video_id`` plus the catalog's metadata columns. The popularity-prior column is not exported.

Milvus is not offered: Milvus Lite (its embedded mode, the only one testable without a server) depends on
``faiss-cpu``, which would overwrite the ``faiss`` module of our ``faiss-gpu`` dependency.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multimodal_rec.bundle import CATALOG_FILE, EMBEDDINGS_FILE, read_manifest
from multimodal_rec.errors import UserError

LOG = logging.getLogger(__name__)
TARGETS = ("qdrant",)
EXTRA = "pip install -e '.[export]'"


@dataclass
class ExportResult:
    target: str
    where: str  # local path or URL
    collection: str
    count: int
    dim: int


def _payloads(catalog: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-safe metadata per video (numpy scalars to Python, NaN to None)."""
    out = []
    for rec in catalog.to_dict("records"):
        clean = {}
        for k, v in rec.items():
            if isinstance(v, np.generic):
                v = v.item()
            if isinstance(v, float) and math.isnan(v):
                v = None
            clean[str(k)] = v
        out.append(clean)
    return out


def _batches(n: int, size: int) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


def export_bundle(
    bundle: str | Path,
    to: str,
    out: str | Path | None = None,
    url: str | None = None,
    collection: str = "videos",
    batch_size: int = 1024,
) -> ExportResult:
    """Write the bundle's vectors and metadata to a new (or replaced) ``collection``.

    ``out``: a local database directory (Qdrant's embedded mode, no server); ``url``: a Qdrant server.
    """
    if to not in TARGETS:
        raise UserError(f"unknown export target {to!r}: use one of {', '.join(TARGETS)}")
    if (out is None) == (url is None):
        raise UserError("give exactly one of --out (a local database path) or --url (a server)")
    bundle = Path(bundle)
    read_manifest(bundle, verify=True)
    xb = np.load(bundle / EMBEDDINGS_FILE)
    catalog = pd.read_parquet(bundle / CATALOG_FILE)
    if len(catalog) != len(xb):
        raise UserError(f"bundle {bundle} is inconsistent: {len(catalog)} catalog rows, {len(xb)} embeddings")
    payloads = _payloads(catalog)
    where = str(url if url is not None else Path(out).resolve())
    _to_qdrant(xb, payloads, out, url, collection, batch_size)
    LOG.info("exported %d vectors of dim %d to %s %s (collection %s)", len(xb), xb.shape[1], to, where, collection)
    return ExportResult(to, where, collection, len(xb), int(xb.shape[1]))


def _to_qdrant(
    xb: np.ndarray, payloads: list[dict[str, Any]], out: Any, url: str | None, collection: str, batch_size: int
) -> None:
    try:
        from qdrant_client import QdrantClient, models
    except ImportError:
        raise UserError(f"export to qdrant needs qdrant-client: {EXTRA}") from None
    client = QdrantClient(url=url) if url else QdrantClient(path=str(out))
    try:
        if client.collection_exists(collection):
            client.delete_collection(collection)
        client.create_collection(
            collection, vectors_config=models.VectorParams(size=int(xb.shape[1]), distance=models.Distance.DOT)
        )
        for s in _batches(len(xb), batch_size):
            client.upsert(
                collection,
                points=models.Batch(ids=list(range(s.start, s.stop)), vectors=xb[s].tolist(), payloads=payloads[s]),
                wait=True,
            )
    finally:
        client.close()
