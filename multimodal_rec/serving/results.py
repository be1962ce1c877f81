"""What the serving API hands back: ranked hits, and the outcome of adding videos."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Hit:
    """One ranked video: id, score (cosine; plus the popularity prior for recommend), 1-based rank, metadata.

    ``moment`` (text search): where in the video the query matches, ``{"start_s", "end_s", "score"}`` (``end_s``
    None when the video's duration is unknown); ``scores`` (hybrid search): the parts of a fused score.
    """

    video_id: str
    score: float
    rank: int
    metadata: dict[str, Any] = field(default_factory=dict)
    moment: dict[str, Any] | None = None  # {"start_s": float, "end_s": float | None, "score": float}
    scores: dict[str, Any] | None = None  # hybrid: {"vector": cosine | None, "lexical": bm25 | None}

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready dict: video_id, score, rank, the metadata columns, and ``moment`` / ``scores`` when set."""
        out = {"video_id": self.video_id, "score": round(self.score, 6), "rank": self.rank, **self.metadata}
        if self.moment is not None:
            out["moment"] = {k: round(v, 6) if isinstance(v, float) else v for k, v in self.moment.items()}
        if self.scores is not None:
            out["scores"] = {name: None if s is None else round(s, 6) for name, s in self.scores.items()}
        return out


def clock(seconds: float | None) -> str:
    """Seconds as ``mm:ss`` (``h:mm:ss`` past an hour), ``?`` when unknown."""
    if seconds is None:
        return "?"
    s = round(float(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m:02d}:{s % 60:02d}"


def moment_text(moment: dict[str, Any]) -> str:
    """A hit's moment as ``mm:ss–mm:ss``."""
    return f"{clock(moment['start_s'])}–{clock(moment.get('end_s'))}"


@dataclass
class AddResult:
    """What :meth:`Recommender.add_videos` did: ids added, and videos skipped (``video_id``, ``path``, ``reason``)."""

    added: list[str]
    skipped: list[dict[str, str]]
