"""What the serving API hands back: ranked hits, and the outcome of adding videos."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Hit:
    """One ranked video: id, score (cosine; plus the popularity prior for recommend), 1-based rank, metadata."""

    video_id: str
    score: float
    rank: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready dict: video_id, score, rank and the metadata columns."""
        return {"video_id": self.video_id, "score": round(self.score, 6), "rank": self.rank, **self.metadata}


@dataclass
class AddResult:
    """What :meth:`Recommender.add_videos` did: ids added, and videos skipped (``video_id``, ``path``, ``reason``)."""

    added: list[str]
    skipped: list[dict[str, str]]
