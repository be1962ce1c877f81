"""Every text the trainer feeds the text tower comes from the platform's own data: no word of the held-out
paraphrase queries ever enters training (captions, history items, titles alike), so the paraphrase figures
measure what the text model brings, not what training was shown."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from multimodal_rec.data import synth
from multimodal_rec.model.multimodal import MultimodalModel

STOP_WORDS = {"a", "an", "the", "of", "in", "to", "on", "with", "which", "is", "and", "that", "it", "its", "this"}


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def test_no_paraphrase_word_reaches_the_text_tower(world: Path, tmp_path: Path, tiny_cfg, monkeypatch) -> None:
    from multimodal_rec.training.train import train

    seen: list[str] = []
    original = MultimodalModel.text_features

    def recording(self, texts, batch_size=256):
        seen.extend(texts)
        return original(self, texts, batch_size)

    monkeypatch.setattr(MultimodalModel, "text_features", recording)
    train(tiny_cfg, world, tmp_path / "run")
    assert len(set(seen)) > 20  # captions and history items were read
    paraphrase_words = set().union(*(_words(q["query"]) for q in synth.paraphrase_queries())) - STOP_WORDS
    leaked = {t: _words(t) & paraphrase_words for t in set(seen)}
    leaked = {t: w for t, w in leaked.items() if w}
    assert not leaked, f"{len(leaked)} training texts hold paraphrase words, e.g. {next(iter(leaked.items()))}"


@pytest.mark.parametrize("word", ["crimson"])
def test_the_check_sees_a_leak(word: str) -> None:
    """The check above would catch a leak: a paraphrase word is in its word set."""
    paraphrase_words = set().union(*(_words(q["query"]) for q in synth.paraphrase_queries())) - STOP_WORDS
    assert word in paraphrase_words
