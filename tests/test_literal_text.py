"""User text is never interpreted: prompts, captions, dataset fields and file names given on the
command line or in dataset files are used, recorded (config.yaml, edits.jsonl, results.csv) and
shown exactly as written, ``${...}`` included; interpolation stays in configuration (experiment
files, key=value overrides).

1. ``edit``: --source/--target/--image/--backbone with ``${oc.env:...}``, a literal ``${price}``
   and an unbalanced ``${``;
2. ``run``: a YAML-list dataset and a folder's captions with the same prompts;
3. ``run`` twice into one output_dir with an escaped ``\\${...}`` (a data path) in an experiment
   file: the text is used and recorded, and the second run is recognised as the same configuration;
4. the helpers: ``literal`` round-trips any text through OmegaConf, the record writer keeps it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from PIL import Image

from framework.cli import main
from framework.config import dump_yaml, literal, read_yaml_data, save_config
from framework.registry import DATASETS
from tests.helpers.runs import make_yaml_dataset, read_csv, run_inprocess

WORD = "EDITFRIENDLY_LITERAL_TEST_WORD"
ENV = "${oc.env:" + WORD + "}"
SOURCE = f"a red {ENV} flower"
TARGETS = ["a ${price} flower", "a flower ${oops", "a \\${x} flower"]


@pytest.fixture(autouse=True)
def _word(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WORD, "EXPANDED")
    monkeypatch.setenv(WORD + "_SCALE", "9")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- 1


def test_edit_uses_and_records_the_text_as_given(tmp_path: Path, photo_path: Path, tiny, capsys) -> None:
    image = tmp_path / f"photo {ENV}.png"
    Image.open(photo_path).save(image)
    model = tmp_path / f"model {ENV}"
    shutil.copytree(tiny.options.model, model)
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        capsys, "edit", "--image", str(image), "--source", SOURCE, *[a for t in TARGETS for a in ("--target", t)],
        "--backbone", str(model), "--steps", "3", "--skip", "1", "--out", str(out), "--no-progress",
        f"editor.guidance_scale=${{oc.decode:${{oc.env:{WORD}_SCALE}}}}",  # configuration: interpolated
    )
    assert code == 0, err
    assert "EXPANDED" not in stdout + err
    for record in [read_yaml_data(out / "config.yaml"), *map(read_yaml_data, (out / "config_history").glob("*.yaml"))]:
        assert record["source_prompt"] == SOURCE
        assert record["target_prompts"] == TARGETS
        assert record["image"] == str(image)
        assert record["backbone"]["model"] == str(model)
        assert record["editor"]["guidance_scale"] == 9
    assert "EXPANDED" not in (out / "config.yaml").read_text()
    lines = [json.loads(line) for line in (out / "edits.jsonl").read_text().splitlines()]
    assert [line["target_prompt"] for line in lines] == TARGETS
    assert {line["source_prompt"] for line in lines} == {SOURCE} and {line["image"] for line in lines} == {str(image)}
    assert lines[0]["backbone"]["model"] == str(model) and lines[0]["editor"]["guidance_scale"] == 9
    assert len([p for p in out.glob("*.png") if p.name != "input.png"]) == len(TARGETS)


# ----------------------------------------------------------------------------- 2


def write_experiment(path: Path, data: str, out: Path) -> Path:
    path.write_text(
        f"backbone: {{name: tiny}}\ndata: {data}\nmethods:\n"
        "  - name: a\n    inverter: {name: ddpm_edit_friendly}\n    editor: text\n"
        f"    num_steps: 3\n    skip: 1\nmetrics: [time]\ntrainer: {{accelerator: cpu, devices: 1}}\n"
        f"logger: {{name: csv}}\noutput_dir: {out}\nseed: 0\n"
    )
    return path


def test_run_takes_yaml_list_prompts_as_written(tmp_path: Path, tiny) -> None:
    dataset = make_yaml_dataset(tmp_path / "data", n=2)
    entries = yaml.safe_load(dataset.read_text())
    entries[0]["source_prompt"], entries[0]["target_prompts"] = SOURCE, TARGETS
    dataset.write_text(yaml.safe_dump(entries))
    out = tmp_path / "run"
    cfg = write_experiment(tmp_path / "exp.yaml", f"{{name: yaml_list, path: {dataset}}}", out)
    assert run_inprocess(cfg) == 0
    rows = [r for r in read_csv(out / "results.csv") if r["item_id"] == "img0"]
    assert [r["target_prompt"] for r in rows] == TARGETS
    assert {r["source_prompt"] for r in rows} == {SOURCE} and {r["status"] for r in rows} == {"ok"}
    assert "EXPANDED" not in (out / "results.csv").read_text()


def test_folder_captions_are_taken_as_written(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "cat.png")
    (tmp_path / "captions.yaml").write_text(yaml.safe_dump({"cat.png": {"source": SOURCE, "targets": TARGETS}}))
    (item,) = DATASETS.build({"name": "folder", "path": str(tmp_path)}).items()
    assert item.source_prompt == SOURCE and item.target_prompts == TARGETS


# ----------------------------------------------------------------------------- 3


def test_escaped_configuration_is_recorded_as_text_and_a_rerun_is_the_same_run(tmp_path: Path, tiny) -> None:
    dataset = make_yaml_dataset(tmp_path / "data ${x}", n=1)  # a folder named with ${...}
    out = tmp_path / "run"
    # in configuration, \${...} is how text that looks like an interpolation is written
    written = str(dataset).replace("${", "\\${")
    cfg = write_experiment(tmp_path / "exp.yaml", "\n  name: yaml_list\n  path: '" + written + "'", out)
    assert run_inprocess(cfg) == 0
    assert read_yaml_data(out / "config.yaml")["data"]["path"] == str(dataset)
    assert run_inprocess(cfg) == 0  # the same configuration: not refused, nothing done twice
    assert [r["status"] for r in read_csv(out / "results.csv")] == ["ok"]


# ----------------------------------------------------------------------------- 4


@pytest.mark.parametrize("text", [*TARGETS, SOURCE, "\\\\${a}", "a\\", "$", "${}", "C:\\dir\\${x}\\"])
def test_literal_keeps_any_text_through_omegaconf(tmp_path: Path, text: str) -> None:
    node = OmegaConf.create({"one": literal(text), "many": literal([text, {"deep": text}])})
    assert node.one == text
    assert OmegaConf.to_container(node, resolve=True) == {"one": text, "many": [text, {"deep": text}]}
    save_config(node, tmp_path / "config.yaml")
    assert read_yaml_data(tmp_path / "config.yaml") == {"one": text, "many": [text, {"deep": text}]}


def test_records_are_written_as_omegaconf_writes_them() -> None:
    data = {"a": 1, "b": [1.5, "1e3", "yes", "", "é", "two\nlines"], "c": {"d": None, "e": True}}
    assert dump_yaml(data) == OmegaConf.to_yaml(OmegaConf.create(data))
