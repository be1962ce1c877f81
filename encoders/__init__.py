"""The three towers of multimodal_rec: text, video and user, each ``forward(...) -> [B, D]`` L2-normalised.

This package imports nothing from ``multimodal_rec``: the towers are plain ``nn.Module``s built from their
config dataclasses, usable on their own.
"""

from encoders.heads import ProjectionHead
from encoders.text import TextTower, TextTowerConfig
from encoders.user import UserTower, UserTowerConfig
from encoders.video import VideoTower, VideoTowerConfig

__all__ = [
    "ProjectionHead",
    "TextTower",
    "TextTowerConfig",
    "UserTower",
    "UserTowerConfig",
    "VideoTower",
    "VideoTowerConfig",
]
