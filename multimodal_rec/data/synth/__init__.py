"""Synthetic demo world: tiny coloured-shape videos, captions, and sequential user interactions.

Every clip shows ONE object (circle, square or triangle) in one of seven colours doing one of six
motions. Captions describe the clip with a fixed caption vocabulary; :func:`paraphrase_queries`
describes the same combinations with a word-disjoint vocabulary so a text model can be tested on
language it never saw during training. Users have a few latent "interests" and watch in sessions
that stick to one interest, so recent history predicts the next item better than long-term history.

- :mod:`.vocab`: colours, shapes, motions and every word the captions, queries and paraphrases use
- :mod:`.render`: one clip's frames and its reproducible h264 file
- :mod:`.world`: the catalog (combinations, splits, captions), the simulated users, the files (:func:`make_world`)
- :mod:`.names`: made-up video names; titles are "<Name>: <Color> <shape> <motion phrase>", unique per video,
  stating the clip in the captions' words (paraphrases share no word with them)
- :mod:`.long`: long videos of several clips back to back with ``moments.csv`` (:func:`make_long_world`)
"""

from multimodal_rec.data.synth.long import LongSummary, make_long_world
from multimodal_rec.data.synth.render import RGB
from multimodal_rec.data.synth.vocab import (
    CAPTION_MOTIONS,
    CAPTION_SHAPES,
    COLORS,
    MOTIONS,
    SHAPES,
    caption_vocabulary,
    paraphrase_queries,
    vocab_queries,
)
from multimodal_rec.data.synth.world import WorldSummary, make_world

__all__ = [
    "CAPTION_MOTIONS",
    "CAPTION_SHAPES",
    "COLORS",
    "MOTIONS",
    "RGB",
    "SHAPES",
    "LongSummary",
    "WorldSummary",
    "caption_vocabulary",
    "make_long_world",
    "make_world",
    "paraphrase_queries",
    "vocab_queries",
]
