"""``--backbone PATH`` errors that say what is wrong with the folder, and a help that lists the
presets. Nothing here reaches the network: a folder is checked before any hub look-up."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from framework.cli import main

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "data" / "digit_seven.png"
SOURCE = "a red seven on a black background"


def edit_error(capsys, backbone: str, tmp_path: Path) -> str:
    """The one stderr line of ``editfriendly edit --backbone BACKBONE`` (which must exit 2)."""
    code = main(
        ["edit", "--backbone", backbone, "--image", str(IMAGE), "--source", SOURCE, "--target", SOURCE,
         "--out", str(tmp_path / "out")]
    )
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert not (tmp_path / "out").exists()
    return lines[0]


@pytest.mark.parametrize("path", ["missing", "./missing", "sub/dir/missing", "../missing-model"])
def test_a_folder_that_does_not_exist_says_so(path: str, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    err = edit_error(capsys, path, tmp_path)
    assert err.startswith(f"error: folder not found: {path} ")
    assert "digits" in err and "hub" in err and "cannot be reached" not in err
    assert time.perf_counter() - start < 30  # no hub look-up


def test_an_empty_folder_says_so(tmp_path, capsys) -> None:
    (tmp_path / "model").mkdir()
    err = edit_error(capsys, str(tmp_path / "model"), tmp_path)
    assert "is empty" in err and "unet/" in err and "cannot be reached" not in err


def test_a_partial_stable_diffusion_folder_names_the_missing_parts(tiny, tmp_path, capsys) -> None:
    model = tmp_path / "sd"
    shutil.copytree(tiny.options.model, model)
    shutil.rmtree(model / "unet")
    (model / "text_encoder" / "config.json").unlink()
    (model / "text_encoder" / "model.safetensors").unlink()
    err = edit_error(capsys, str(model), tmp_path)
    assert "incomplete: unet/ and text_encoder/ are missing or empty" in err, err
    assert "vae/" not in err.split("(")[0] and "cannot be reached" not in err


def test_a_partial_digits_folder_names_the_missing_part_from_its_model_index(tmp_path, capsys) -> None:
    from plugins.backbones.digits import DIGITS_MODEL

    model = tmp_path / "digits"
    shutil.copytree(DIGITS_MODEL, model)
    shutil.rmtree(model / "text_encoder")
    err = edit_error(capsys, str(model), tmp_path)
    assert "incomplete: text_encoder/ is missing or empty" in err, err
    assert "model_index.json lists unet, text_encoder, tokenizer, scheduler" in err


def test_a_file_is_not_a_model_folder(tmp_path, capsys) -> None:
    err = edit_error(capsys, str(IMAGE), tmp_path)
    assert "is a file, not a model folder" in err


def test_weights_hint_points_at_the_trained_model() -> None:
    from framework.backbone import weights_hint

    hint = weights_hint()
    assert "--backbone digits" in hint and "--backbone tiny" not in hint


def test_edit_help_lists_every_backbone_preset(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["edit", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    presets = sorted(p.stem for p in (ROOT / "configs" / "backbone").glob("*.yaml"))
    assert "digits" in presets
    for name in presets:
        assert name in out, name
    assert "sd14 (default)" in out
    for group in ("inverter", "editor"):  # the key=value presets too
        for name in sorted(p.stem for p in (ROOT / "configs" / group).glob("*.yaml")):
            assert f" {name}," in out or f" {name}." in out, (group, name)


def test_model_index_of_a_new_digits_folder_lists_its_words(tmp_path) -> None:
    from framework.digits import WORDS
    from plugins.backbones.digits import DigitsArchitecture, build_digits_model, save_digits_model, trained_words

    save_digits_model(tmp_path / "m", *build_digits_model(DigitsArchitecture(block_out_channels=(8, 8)), 0))
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["_editfriendly_words"] == list(WORDS)
    assert trained_words(tmp_path / "m") == frozenset(WORDS)


def test_run_refuses_a_missing_folder_before_the_trainer_starts(tmp_path, monkeypatch, capsys) -> None:
    import framework.experiment.run as run_module

    def no_trainer(*args, **kwargs):
        raise AssertionError("the trainer started")

    monkeypatch.setattr(run_module.pl, "Trainer", no_trainer)
    data = tmp_path / "list.yaml"
    data.write_text(f"- {{init_img: {IMAGE}, source_prompt: {SOURCE}, target_prompts: [{SOURCE}]}}\n")
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        f"backbone: {{name: text_pixel_ddpm, model: {tmp_path / 'gone'}}}\ndata: {{name: yaml_list, path: {data}}}\n"
        f"inverter: ddpm_edit_friendly\neditor: text\nlogger: none\noutput_dir: {tmp_path / 'out'}\n"
    )
    assert main(["run", str(cfg), "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith(f"error: folder not found: {tmp_path / 'gone'} ")
    assert not (tmp_path / "out").exists()


def test_an_owner_name_path_whose_first_folder_exists_is_named_as_a_folder_too(tmp_path, capsys, monkeypatch) -> None:
    """models/sd15 has the form of a hub id; where models/ is a folder here, the error says that
    models/sd15 is not (and what the hub look-up gave)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "models").mkdir()
    err = edit_error(capsys, "models/sd15", tmp_path)
    assert "there is no folder models/sd15 here, and as a hub id:" in err and "HF_HUB_OFFLINE=1" in err
