"""multimodal_rec: text-to-video retrieval and recommendation in one embedding space, served from FAISS.

from multimodal_rec import Recommender
rec = Recommender.load("bundle/")
rec.search("a red ball bouncing", k=10)
rec.recommend(history=["cooking pasta", "knife skills"], k=10, exclude=["v17"])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["AddResult", "Hit", "InfrastructureError", "Recommender", "UserError", "__version__"]

if TYPE_CHECKING:
    from multimodal_rec.errors import InfrastructureError, UserError
    from multimodal_rec.serving.recommender import AddResult, Hit, Recommender


def __getattr__(name: str) -> Any:  # lazy: importing the package does not import torch
    if name in ("AddResult", "Hit", "Recommender"):
        from multimodal_rec.serving import recommender

        return getattr(recommender, name)
    if name in ("UserError", "InfrastructureError"):
        from multimodal_rec import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'multimodal_rec' has no attribute {name!r}")
