"""Offline catalog encoding: plan a resumable job, embed clips (local or Ray engine), write the bundle.

Modules, each importing only those before it: ``embed`` (the one decode-and-embed path), ``job`` (the plan, its
resumable shards, reuse of a previous bundle), the engines ``local`` and ``ray_engine``, ``finish`` (the bundle),
``pipeline`` (``encode_catalog``: picks the engine). The names below are imported lazily, on first use, so importing
one submodule does not import the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multimodal_rec.encoding.embed import encode_videos
    from multimodal_rec.encoding.finish import EncodeResult
    from multimodal_rec.encoding.pipeline import ENGINES, default_workers, encode_catalog

_EXPORTS = {
    "encode_catalog": "pipeline",
    "default_workers": "pipeline",
    "ENGINES": "pipeline",
    "EncodeResult": "finish",
    "encode_videos": "embed",
}
__all__ = ["ENGINES", "EncodeResult", "default_workers", "encode_catalog", "encode_videos"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
