"""Config sections nest by their field types: a new config class needs no registry; unknown keys are refused."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from multimodal_rec.config import build_config, config_from_dict, load_config
from multimodal_rec.errors import UserError


@dataclass
class _InnerCfg:  # defined here, registered nowhere
    width: int = 4


@dataclass
class _OuterCfg:
    name: str = "x"
    inner: _InnerCfg = field(default_factory=_InnerCfg)
    extra: dict | None = None  # a plain mapping value, not a section


def test_a_new_config_class_nests_without_a_registry() -> None:
    cfg = build_config(_OuterCfg, {"inner": {"width": 9}, "extra": {"width": 1}})
    assert isinstance(cfg.inner, _InnerCfg) and cfg.inner.width == 9
    assert cfg.extra == {"width": 1}  # not a dataclass field: kept as the dict it is
    with pytest.raises(UserError, match=r"unknown config key outer\.inner\.depth"):
        build_config(_OuterCfg, {"inner": {"depth": 1}}, "outer")


def test_run_config_sections_round_trip_and_refuse_unknown_keys() -> None:
    cfg = load_config("tiny")
    assert config_from_dict(cfg.to_dict()) == cfg
    assert type(config_from_dict({"model": {"video": {"num_frames": 3}}}).model.video).__name__ == "VideoTowerConfig"
    with pytest.raises(UserError, match=r"unknown config key model\.video\.frames \(known: "):
        config_from_dict({"model": {"video": {"frames": 3}}})
    with pytest.raises(UserError, match=r"'model\.text' must be a mapping"):
        config_from_dict({"model": {"text": 3}})
