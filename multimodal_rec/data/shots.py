"""Shot boundaries of a video, for cutting it into segments at its own cuts rather than on a fixed grid.

A window that straddles a cut mixes two scenes in its T frames, so its vector matches neither; cutting at shots
first keeps each segment one scene. PySceneDetect's ``AdaptiveDetector`` with its default settings (a rolling-average
content detector that tolerates camera motion) reads every frame once through OpenCV's decoder, at about 300 s of
low-resolution video per second on one core here. Not through its PyAV backend: opening a video there restores
ffmpeg's default log callback for the whole process, and every later PyAV decode would print ffmpeg's messages even
under ``--quiet``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from multimodal_rec.errors import UserError

LOG = logging.getLogger(__name__)


def detect_cuts(path: str | Path) -> list[int]:
    """Frame indices where a new shot starts (the first shot's 0 not included; [] for a single shot)."""
    try:
        from scenedetect import AdaptiveDetector, detect
    except ImportError:
        raise UserError("encode.shots needs PySceneDetect: pip install scenedetect") from None
    logging.getLogger("pyscenedetect").setLevel(logging.WARNING)  # it logs every file it opens at INFO
    try:
        scenes = detect(str(path), AdaptiveDetector(), show_progress=False)  # OpenCV's decoder (note below)
    except Exception as e:
        LOG.debug("shot detection failed on %s: %s", path, e)
        return []
    return [int(start.frame_num) for start, _ in scenes[1:]]
