"""Loggers of ``editfriendly run`` built from the presets in configs/logger/, without touching
the process environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from framework.config import config_dir
from framework.errors import ConfigError
from framework.experiment.loggers import LOGGER_BUILDERS, build_logger, logger_options, wandb_staging


def test_every_logger_has_a_preset_and_every_preset_a_logger() -> None:
    presets = {p.stem for p in (config_dir() / "logger").glob("*.yaml")}
    assert presets == set(LOGGER_BUILDERS) == {"wandb", "csv", "none"}


def test_options_are_the_preset_updated_by_the_config() -> None:
    name, opts = logger_options({"name": "wandb", "project": "p", "max_table_images": 5, "reconstructions": True})
    # the preset's defaults, the given key, and not the runner's own keys
    assert name == "wandb" and opts == {"mode": "offline", "project": "p", "save_dir": None, "run_name": None}
    assert logger_options(None) == ("wandb", {"mode": "offline", "project": "editfriendly", "save_dir": None,
                                              "run_name": None})
    assert logger_options("CSV")[1]["run_name"] == "csv_logs"
    for off in ("none", "off", "false", "null", False, {"name": "none", "mode": "offline"}):
        assert logger_options(off)[0] == "none"
        assert build_logger(off, Path("x"), "x") is None


def test_bad_logger_names_and_modes_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown logger 'tensorboard'; accepted: csv, none, wandb"):
        build_logger({"name": "tensorboard"}, tmp_path, "run")
    with pytest.raises(ConfigError, match="logger.mode must be offline, online or disabled, got 'dryrun'"):
        build_logger({"name": "wandb", "mode": "dryrun"}, tmp_path, "run")
    with pytest.raises(ConfigError, match="logger must be a logger name or a mapping"):
        build_logger([1], tmp_path, "run")


def test_csv_logger_ignores_keys_of_other_loggers(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    logger = build_logger({"name": "csv", "mode": "offline", "project": "p", "prefix": "x"}, tmp_path, "run")
    assert isinstance(logger, CSVLogger)
    assert Path(logger.save_dir) == tmp_path and logger.name == "csv_logs" and logger._prefix == "x"


def test_wandb_logger_gets_mode_and_dir_as_arguments_and_leaves_the_environment_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning.pytorch.loggers import WandbLogger

    for key in ("WANDB_SILENT", "WANDB_DATA_DIR", "WANDB_MODE"):
        monkeypatch.delenv(key, raising=False)
    before = dict(os.environ)
    logger = build_logger({"name": "wandb", "mode": "disabled", "project": "p", "group": "g"}, tmp_path, "run7")
    assert isinstance(logger, WandbLogger)
    init = logger._wandb_init
    assert init["mode"] == "disabled" and init["project"] == "p" and init["name"] == "run7" and init["group"] == "g"
    assert Path(init["dir"]) == tmp_path and init["settings"].silent is True
    run = logger.experiment  # wandb.init, in disabled mode: no files
    run.finish()
    assert dict(os.environ) == before
    with wandb_staging(tmp_path):
        assert os.environ["WANDB_DATA_DIR"] == str(tmp_path / "wandb" / "data")
    assert dict(os.environ) == before
    monkeypatch.setenv("WANDB_DATA_DIR", "/elsewhere")  # the user's choice wins
    with wandb_staging(tmp_path):
        assert os.environ["WANDB_DATA_DIR"] == "/elsewhere"


def test_the_schema_accepts_every_key_of_every_preset() -> None:
    """configs/logger/ and the config schema agree: a preset's keys are keys its logger accepts."""
    from framework.config import load_yaml
    from framework.schema import logger_keys

    for path in (config_dir() / "logger").glob("*.yaml"):
        keys = logger_keys(path.stem)
        assert keys is not None, path
        assert set(load_yaml(path)) <= set(keys), path
