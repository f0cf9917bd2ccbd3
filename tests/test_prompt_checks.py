"""Prompts the text encoder cannot take are refused before any network runs; words a closed
vocabulary has never seen are named in a warning.

The ``digits`` model's text encoder takes 16 tokens; its tokenizer knows the 19 words of the
prompt grammar. Network evaluations are counted on the UNet itself (a forward pre-hook).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from framework.errors import ConfigError, InputError
from framework.registry import EDITORS, INVERTERS
from tests.helpers.runs import read_csv, run_inprocess

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "data" / "digit_seven.png"
SOURCE = "a red seven on a black background"
TARGET = "a blue seven on a black background"
LONG = "a blue seven on a black background with a few more words than it takes"


@pytest.fixture(scope="module")
def digits():
    from framework.backbone import load_backbone

    return load_backbone("digits", device="cpu")


class UNetCalls:
    """Counts the UNet's forward passes while installed."""

    def __init__(self, backbone) -> None:
        self.n = 0
        self.handle = backbone.unet.register_forward_pre_hook(self._count)

    def _count(self, module, args) -> None:
        self.n += 1

    def __enter__(self) -> UNetCalls:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def _edit(digits, editor_cfg, target, steps=4):
    from framework.edit import invert_and_edit
    from framework.images import load_image_tensor

    image = load_image_tensor(IMAGE, digits.resolution, digits.size_multiple)
    inverter = INVERTERS.build({"name": "ddpm_edit_friendly"})
    editor = EDITORS.build(editor_cfg)
    return invert_and_edit(digits, inverter, editor, image, SOURCE, [TARGET, target], num_steps=steps, skip=0, seed=0)


def test_the_digits_rules_know_the_limit_and_the_vocabulary(digits) -> None:
    from framework.backbone import load_prompt_rules

    rules = digits.prompt_rules()
    assert rules.max_tokens == 16 and rules.token_count(SOURCE) == 9  # 7 words, start and end
    assert len(rules.known_words) == 19
    assert digits.check_prompts([SOURCE, TARGET]) == []
    assert len(digits.check_prompts([LONG, SOURCE, LONG])) == 1
    # read without loading the networks: the same answers
    cheap = load_prompt_rules("digits")
    assert cheap.max_tokens == 16 and cheap.known_words == rules.known_words
    assert cheap.problems([LONG]) == rules.problems([LONG])


def test_a_too_long_target_is_refused_before_any_network_evaluation(digits) -> None:
    with UNetCalls(digits) as calls, pytest.raises(InputError, match=r"target prompt .* has \d+ tokens .* takes 16"):
        _edit(digits, {"name": "text"}, LONG)
    assert calls.n == 0


def test_plug_and_plays_default_negative_prompt_is_refused_before_any_network_evaluation(digits) -> None:
    with UNetCalls(digits) as calls, pytest.raises(
        ConfigError, match=r"plug_and_play\.negative_prompt: .*30 tokens.*editor\.negative_prompt=''"
    ):
        _edit(digits, {"name": "plug_and_play"}, TARGET)
    assert calls.n == 0


def test_a_too_long_sentence_of_a_sentence_file_is_refused_before_any_network_evaluation(digits, tmp_path) -> None:
    sentences = tmp_path / "blue.txt"
    sentences.write_text(f"{TARGET}\n{LONG}\n")
    editor = {"name": "zero_shot", "target_sentences": str(sentences), "negative_prompt": "empty"}
    with UNetCalls(digits) as calls, pytest.raises(ConfigError, match=r"zero_shot\.target_sentences .*blue\.txt"):
        _edit(digits, editor, TARGET)
    assert calls.n == 0


def test_a_word_the_model_has_never_seen_is_named(digits, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="framework.prompts"):
        out = _edit(digits, {"name": "text"}, "a purple seven on a black background", steps=2)
    assert out.images.shape[0] == 2
    warned = [r.getMessage() for r in caplog.records if r.name == "framework.prompts"]
    assert len(warned) == 1 and "'purple'" in warned[0] and "'seven'" not in warned[0], warned


def test_an_open_vocabulary_names_no_word(tiny, caplog) -> None:
    from framework.prompts import warn_unknown_words

    rules = tiny.prompt_rules()
    assert rules.known_words is None
    with caplog.at_level(logging.WARNING, logger="framework.prompts"):
        assert warn_unknown_words(rules, ["a purple zorblax"]) == []
    assert not caplog.records


def test_edit_command_refuses_a_long_prompt_before_loading_the_model(monkeypatch, tmp_path, capsys) -> None:
    from framework.cli import main
    from plugins.backbones import digits as digits_module

    def no_load(self, options=None):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(digits_module.TextPixelBackbone, "__init__", no_load)
    args = ["edit", "--backbone", "digits", "--image", str(IMAGE), "--source", SOURCE, "--out", str(tmp_path / "o")]
    assert main([*args, "--target", LONG]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: target prompt") and "takes 16" in err[0], err
    assert main([*args, "--target", TARGET, "editor=plug_and_play"]) == 2
    assert "plug_and_play.negative_prompt" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _experiment(tmp_path: Path, backbone: str, editor: str, items: list[tuple[str, list[str]]]) -> Path:
    data = tmp_path / "list.yaml"
    data.write_text(
        "".join(
            f"- {{id: item{k}, init_img: {IMAGE}, source_prompt: {json.dumps(s)}, target_prompts: {json.dumps(t)}}}\n"
            for k, (s, t) in enumerate(items)
        )
    )
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        f"backbone: {backbone}\n"
        f"data: {{name: yaml_list, path: {data}}}\n"
        "methods:\n"
        f"  - {{name: m, inverter: ddpm_edit_friendly, editor: {editor}, num_steps: 3, skip: 0}}\n"
        "trainer: {accelerator: cpu, devices: 1}\n"
        "logger: {name: none}\n"
        f"output_dir: {tmp_path / 'out'}\n"
    )
    return cfg


def test_run_records_an_item_with_a_too_long_prompt_as_failed_and_goes_on(tmp_path, caplog) -> None:
    cfg = _experiment(tmp_path, "digits", "text", [(SOURCE, [TARGET]), (SOURCE, [TARGET, LONG]), (LONG, [TARGET])])
    with caplog.at_level(logging.WARNING):
        assert run_inprocess(cfg) == 1
    rows = read_csv(tmp_path / "out" / "results.csv")
    status = {(r["item_id"], r["target_index"]): r["status"] for r in rows}
    assert status == {
        ("item0", "0"): "ok", ("item1", "0"): "failed", ("item1", "1"): "failed", ("item2", "0"): "failed"
    }
    failed = {r["item_id"]: r for r in rows if r["status"] == "failed"}
    assert "target prompt" in failed["item1"]["error"] and "source prompt" in failed["item2"]["error"]
    assert all(r["output_path"] == "" for r in failed.values())  # never inverted nor edited
    assert all((tmp_path / "out" / r["input_path"]).is_file() for r in failed.values())  # the input is kept


def test_run_refuses_a_method_option_no_item_can_take_before_the_trainer_starts(tmp_path, monkeypatch, capsys) -> None:
    import framework.experiment.run as run_module

    def no_trainer(*args, **kwargs):
        raise AssertionError("the trainer started")

    monkeypatch.setattr(run_module.pl, "Trainer", no_trainer)
    cfg = _experiment(tmp_path, "digits", "plug_and_play", [(SOURCE, [TARGET])])
    assert run_inprocess(cfg) == 2
    err = capsys.readouterr().err
    assert "error: method 'm': plug_and_play.negative_prompt" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("when", ["planning", "loaded"])
def test_run_records_items_the_text_encoder_cannot_take_as_failed(tmp_path, tiny, monkeypatch, when) -> None:
    """At planning where the backbone reads its tokenizer alone (tiny builds its cache entry for
    it), else by each process once the model is loaded (a backbone whose rules need the model)."""
    from framework.backbone import load_prompt_rules
    from plugins.backbones.tiny import TinyBackbone

    if when == "loaded":
        monkeypatch.setattr(TinyBackbone, "load_prompt_rules", classmethod(lambda cls, options: None))
    assert (load_prompt_rules("tiny") is None) == (when == "loaded")
    words = " ".join(["cat"] * 80)
    cfg = _experiment(tmp_path, "tiny", "text", [("a photo of a cat", ["a photo of a dog"]), (words, ["a dog"])])
    assert run_inprocess(cfg) == 1
    rows = {r["item_id"]: r for r in read_csv(tmp_path / "out" / "results.csv")}
    assert rows["item0"]["status"] == "ok"
    assert rows["item1"]["status"] == "failed" and "82 tokens" in rows["item1"]["error"]
    assert rows["item1"]["output_path"] == ""


def test_the_prompt_check_costs_no_network_evaluation_on_a_fine_edit(digits) -> None:
    with UNetCalls(digits) as calls:
        out = _edit(digits, {"name": "text"}, TARGET, steps=3)
    assert calls.n == out.inversion_nfe + out.edit_nfe
    assert torch.isfinite(out.images).all()
