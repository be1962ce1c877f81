"""Made-up, pronounceable video names ("Tavo Rimelu") for unique synthetic titles.

A name is two words built from seeded consonant-vowel syllables. No name word is a word the captions, the
vocabulary queries or the paraphrases use, and every word is used by one video only, so a title's name points
at exactly one video (the known-item task) without telling a text model anything about the clip.
"""

from __future__ import annotations

import re

import numpy as np

from multimodal_rec.data.synth.vocab import caption_vocabulary, paraphrase_queries, pick, vocab_queries

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "tr", "sh")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "", "n", "r", "l")  # a word may end in a soft consonant
_WORD_RE = re.compile(r"[a-z]+")


def reserved_words() -> set[str]:
    """Every lowercase word of the captions, the vocabulary queries and the paraphrase queries."""
    words = set(caption_vocabulary())
    for q in vocab_queries() + paraphrase_queries():
        words |= set(_WORD_RE.findall(q["query"].lower()))
    return words


def _word(rng: np.random.Generator) -> str:
    """One made-up word: two or three consonant-vowel syllables and maybe a soft final consonant."""
    syllables = int(rng.integers(2, 4))
    parts = [pick(rng, _ONSETS) + pick(rng, _VOWELS) for _ in range(syllables)]
    return "".join(parts) + pick(rng, _CODAS)


def made_up_names(n: int, rng: np.random.Generator, reserved: set[str] | None = None) -> list[str]:
    """``n`` names of two capitalised made-up words; all ``2n`` words distinct and none in ``reserved``
    (default: :func:`reserved_words`). Same ``rng`` state, same names."""
    taken = set(reserved_words() if reserved is None else reserved)
    names: list[str] = []
    while len(names) < n:
        pair: list[str] = []
        while len(pair) < 2:
            w = _word(rng)
            if w not in taken:
                taken.add(w)
                pair.append(w.capitalize())
        names.append(" ".join(pair))
    return names


def titled(name: str, color: str, shape: str, motion_words: str) -> str:
    """A synthetic title: ``"<Name>: <Color> <shape> <motion phrase>"``."""
    return f"{name}: {color.capitalize()} {shape} {motion_words}"
