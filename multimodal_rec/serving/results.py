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
    scores: dict | None = None  # hybrid search: {"vector": cosine or None, "lexical": BM25 or None}

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready dict: video_id, score, rank and the metadata columns (and ``scores`` when set)."""
        out = {"video_id": self.video_id, "score": round(self.score, 6), "rank": self.rank, **self.metadata}
        if self.scores is not None:
            out["scores"] = {name: None if s is None else round(s, 6) for name, s in self.scores.items()}
        return out


@dataclass
class AddResult:
    """What :meth:`Recommender.add_videos` did: ids added, and videos skipped (``video_id``, ``path``, ``reason``)."""

    added: list[str]
    skipped: list[dict[str, str]]
