"""Registries and config composition."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from omegaconf import OmegaConf

from framework.config import compose, merge_layers, options_only, parse_overrides, save_config
from framework.errors import ConfigError
from framework.registry import BACKBONES, EDITORS, INVERTERS, Registry


def test_builtin_plugins_registered() -> None:
    assert "ddpm_edit_friendly" in INVERTERS.names()
    assert "text" in EDITORS.names()
    assert {"stable_diffusion", "tiny"} <= set(BACKBONES.names())


def test_register_build_and_errors() -> None:
    reg = Registry("widget")

    @dataclass
    class Opts:
        size: int = 3
        scale: float = 1.5

    @reg.register("square")
    class Square:
        Options = Opts

        def __init__(self, options: Opts) -> None:
            self.options = options

    built = reg.build({"name": "square", "size": 7})
    assert built.options == Opts(size=7, scale=1.5)
    assert reg.build("square").options == Opts()
    with pytest.raises(ValueError, match="already registered"):
        reg.register("square")(Square)
    with pytest.raises(ConfigError, match=r"unknown widget 'circle'; known widgets: square"):
        reg.build({"name": "circle"})
    with pytest.raises(ConfigError, match=r"unknown option 'colour'.*accepted options: scale, size"):
        reg.build({"name": "square", "colour": "red"})
    with pytest.raises(ConfigError, match="size"):
        reg.build({"name": "square", "size": "big"})
    with pytest.raises(ConfigError, match="'name'"):
        reg.build({"size": 2})


def test_unknown_builtin_option_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown option 'etaa'"):
        INVERTERS.build({"name": "ddpm_edit_friendly", "etaa": 0.5})


def test_compose_layers_and_overrides(tmp_path) -> None:
    cfg = compose()
    assert cfg.backbone.name == "stable_diffusion"
    assert cfg.backbone.model == "CompVis/stable-diffusion-v1-4"
    assert cfg.inverter == {"name": "ddpm_edit_friendly", "eta": 1.0, "guidance_scale": 3.5, "zero_last_noise": False,
                            "timestep_batch": 1}
    assert cfg.editor.guidance_scale == 15 and cfg.num_steps == 100 and cfg.skip == 36

    exp = tmp_path / "exp.yaml"
    exp.write_text("backbone: tiny\neditor: {name: text, guidance_scale: 9}\nskip: 12\n")
    cfg = compose(exp, ["editor.guidance_scale=7.5", "seed=3", "backbone.seed=4"])
    # the tiny preset replaced SD wholesale: no leftover `model` option
    assert cfg.backbone.name == "tiny" and "model" not in cfg.backbone and cfg.backbone.seed == 4
    assert cfg.editor.guidance_scale == 7.5 and cfg.skip == 12 and cfg.seed == 3

    cfg = compose(overrides=["inverter=ddpm_edit_friendly_reference"])
    assert cfg.inverter.zero_last_noise is True

    path = save_config(cfg, tmp_path / "out" / "config.yaml")
    assert OmegaConf.load(path) == cfg


def test_compose_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown editor 'nope'"):
        compose(overrides=["editor=nope"])
    with pytest.raises(ConfigError, match="unknown option 'strength'"):
        compose(overrides=["editor.strength=2"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])
    with pytest.raises(ConfigError, match="not found"):
        compose(tmp_path / "missing.yaml")


def test_same_plugin_merges_options() -> None:
    merged = merge_layers([{"editor": {"name": "text", "guidance_scale": 9}}, {"editor": "text"}])
    assert merged["editor"]["guidance_scale"] == 15  # the preset file's value wins as later layer
    merged = merge_layers([{"editor": "text"}, {"editor": {"guidance_scale": 3}}])
    # the preset's per-backbone block rides along for compose to apply; the options are these
    assert options_only("editor", merged["editor"]) == {"name": "text", "guidance_scale": 3}
    assert "_from_preset" not in merged["editor"]  # 3 was given explicitly
