"""Offline catalog encoding: plan a resumable job, embed videos (local or Ray engine), write the bundle.

Modules, each importing only those before it: ``embed`` (the one decode-and-embed path: segments and text),
``items`` (a row's content / text / item / segment vectors: ``combine``, ``encode_items``), ``reuse`` (what an
existing bundle already holds), ``job`` (the plan and its resumable shards), the engines ``local`` and
``ray_engine``, ``finish`` (the bundle), ``pipeline`` (``encode_catalog``: picks the engine). The names below are
imported lazily, on first use, so importing one submodule does not import the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multimodal_rec.encoding.embed import encode_videos
    from multimodal_rec.encoding.finish import EncodeResult
    from multimodal_rec.encoding.items import ItemVectors, encode_items
    from multimodal_rec.encoding.pipeline import ENGINES, default_workers, encode_catalog

_EXPORTS = {
    "encode_catalog": "pipeline",
    "default_workers": "pipeline",
    "ENGINES": "pipeline",
    "EncodeResult": "finish",
    "encode_videos": "embed",
    "encode_items": "items",
    "ItemVectors": "items",
}
__all__ = [
    "ENGINES",
    "EncodeResult",
    "ItemVectors",
    "default_workers",
    "encode_catalog",
    "encode_items",
    "encode_videos",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
