"""The config schema: every misspelt key is an error naming it and the closest valid key."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from framework import schema
from framework.config import compose, config_dir
from framework.errors import ConfigError
from framework.sampling import Editor

EXPERIMENT = """\
backbone: {name: tiny}
data: {name: yaml_list, path: data/example.yaml}
methods:
  - name: a
    inverter: ddpm_edit_friendly
    editor: text
    num_steps: 10
    skip: 3
trainer: {accelerator: cpu, devices: 1}
logger: {name: wandb, mode: offline, project: editfriendly}
output_dir: runs/x
"""


def experiment(tmp_path: Path, text: str = EXPERIMENT, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(**kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        compose(**kwargs)
    return str(info.value)


@pytest.mark.parametrize(
    "line, key, hint, where",
    [
        ("ouput_dir: runs/y", "ouput_dir", "output_dir", "the experiment config"),
        ("num_step: 5", "num_step", "num_steps", "the experiment config"),
        ("metric: [time]", "metric", "metrics", "the experiment config"),
    ],
)
def test_top_level_typo_in_the_experiment_file(tmp_path, line, key, hint, where):
    path = experiment(tmp_path, EXPERIMENT + line + "\n")
    msg = error_of(experiment=path, kind="run")
    assert f"unknown key {key!r}" in msg
    assert f"did you mean {hint!r}" in msg
    assert where in msg and str(path) in msg


def test_nested_typos_in_the_experiment_file(tmp_path):
    text = EXPERIMENT.replace("devices: 1", "devics: 1")
    msg = error_of(experiment=experiment(tmp_path, text), kind="run")
    assert "unknown key 'devics' in trainer" in msg and "did you mean 'devices'" in msg

    text = EXPERIMENT.replace("project: editfriendly", "projet: editfriendly")
    msg = error_of(experiment=experiment(tmp_path, text), kind="run")
    assert "unknown key 'projet' in the wandb logger config" in msg and "did you mean 'project'" in msg

    text = EXPERIMENT.replace("num_steps: 10", "num_step: 10")
    msg = error_of(experiment=experiment(tmp_path, text), kind="run")
    assert "unknown key 'num_step' in methods[0] (a)" in msg and "did you mean 'num_steps'" in msg

    text = EXPERIMENT.replace("    skip: 3\n", "    skip: 3\n    sweep: {skp: [1, 2]}\n")
    msg = error_of(experiment=experiment(tmp_path, text), kind="run")
    assert "cannot sweep 'skp' in methods[0] (a)" in msg and "did you mean 'skip'" in msg

    text = EXPERIMENT + "compare: {x: shape_iou, yy: color_reached}\n"
    msg = error_of(experiment=experiment(tmp_path, text), kind="run")
    assert "unknown key 'yy' in compare" in msg


def test_the_runner_owned_trainer_keys_are_refused(tmp_path):
    text = EXPERIMENT.replace("devices: 1", "devices: 1, logger: false")
    msg = error_of(experiment=experiment(tmp_path, text), kind="run")
    assert "trainer.logger" in msg and "set by the runner" in msg


def test_csv_logger_refuses_wandb_keys_but_switching_logger_drops_them(tmp_path):
    path = experiment(tmp_path, EXPERIMENT.replace("name: wandb, ", "name: csv, "))
    msg = error_of(experiment=path, kind="run")
    assert "unknown key 'mode' in the csv logger config" in msg
    # naming another logger on the command line replaces the file's logger wholesale
    cfg = compose(experiment=experiment(tmp_path), overrides=["logger.name=csv"], kind="run")
    assert dict(cfg.logger) == {"name": "csv"}
    cfg = compose(experiment=experiment(tmp_path), overrides=["logger=none"], kind="run")
    assert dict(cfg.logger) == {"name": "none"}
    # the same logger: options merge
    cfg = compose(experiment=experiment(tmp_path), overrides=["logger.project=other"], kind="run")
    assert dict(cfg.logger) == {"name": "wandb", "mode": "offline", "project": "other"}
    # wandb takes WandbLogger's and wandb.init's own arguments
    cfg = compose(experiment=experiment(tmp_path), overrides=["logger.entity=lab", "logger.tags=[a]"], kind="run")
    assert cfg.logger.entity == "lab"
    msg = error_of(experiment=experiment(tmp_path), overrides=["logger.name=tensorbord"], kind="run")
    assert "unknown logger 'tensorbord'" in msg


def test_command_line_overrides_are_checked_nested(tmp_path):
    msg = error_of(experiment=experiment(tmp_path), overrides=["trainer.devics=2"], kind="run")
    assert "unknown key 'devics' in trainer in the command line" in msg and "'devices'" in msg
    msg = error_of(experiment=experiment(tmp_path), overrides=["ouput_dir=x"], kind="run")
    assert "'ouput_dir'" in msg and "did you mean 'output_dir'" in msg
    # every pl.Trainer argument is accepted
    cfg = compose(experiment=experiment(tmp_path), overrides=["trainer.precision=bf16-true"], kind="run")
    assert cfg.trainer.precision == "bf16-true"


def test_edit_keys():
    msg = error_of(overrides=["num_step=5"], kind="edit")
    assert "unknown key 'num_step'" in msg and "did you mean 'num_steps'" in msg
    # run-only keys are not edit keys
    msg = error_of(overrides=["output_dir=x"], kind="edit")
    assert "unknown key 'output_dir'" in msg
    # plugin options stay the plugins' business (their dataclasses name the typo)
    with pytest.raises(ConfigError, match="guidance_scal"):
        compose(overrides=["editor.guidance_scal=5"], kind="edit")
    assert compose(overrides=["num_steps=20"], kind="edit").skip == 7


def test_every_shipped_experiment_passes_the_schema():
    files = sorted((config_dir() / "experiment").glob("*.yaml"))
    assert len(files) >= 5
    for path in files:
        cfg = compose(experiment=path, kind="run")
        assert cfg.methods, path


def test_one_home_for_the_defaults():
    cfg = compose()
    assert (cfg.num_steps, cfg.skip, cfg.seed) == (schema.DEFAULT_NUM_STEPS, schema.DEFAULT_SKIP, 0)
    assert cfg.inverter.name == schema.EditConfig.inverter and cfg.editor.name == schema.EditConfig.editor
    assert inspect.signature(Editor.edit).parameters["skip"].default == schema.DEFAULT_SKIP
    from framework.registry import EDITORS

    for name in EDITORS.names():
        param = inspect.signature(EDITORS.get(name).edit).parameters.get("skip")
        assert param is None or param.default == schema.DEFAULT_SKIP, name
    assert schema.trainer_defaults() == {"accelerator": "auto", "devices": 1, "strategy": "auto", "num_nodes": 1}
    assert set(schema.RUN_KEYS) > set(schema.EDIT_KEYS)


def test_suggest_ignores_case_and_separators():
    assert schema.suggest("outputdir", ["output_dir", "seed"]) == "; did you mean 'output_dir'?"
    assert schema.suggest("zzz", ["output_dir", "seed"]) == ""
