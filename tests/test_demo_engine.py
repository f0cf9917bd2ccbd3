"""The demo's model side without a server: the default backbone, the options boxes, the cache key,
the shipped examples, and that the rest of the CLI never imports Gradio."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from framework.demo import (
    PAGE_OPTIONS,
    PARTIAL_PREFIX,
    SERVER_FILE_OPTIONS,
    DemoEngine,
    EditRequest,
    InversionCache,
    LiteralText,
    as_int,
    inversion_key,
    load_examples,
    parse_options,
)
from framework.errors import ConfigError, InputError, WeightsNotFoundError

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_cli_parser_and_list_do_not_import_gradio() -> None:
    code = (
        "import sys, io, contextlib\n"
        "from framework.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['list']) == 0\n"
        "print('gradio' in sys.modules, 'framework.demo' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.stdout.split() == ["False", "True"]  # the parser is there, Gradio is not


def test_default_backbone_is_digits_where_it_loads_otherwise_tiny(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import framework.config

    tried: list[str] = []

    def fake_load(cls, name, out, device):
        tried.append(name)
        if name == "digits":
            raise WeightsNotFoundError("no weights for digits here")
        return name

    monkeypatch.setattr(DemoEngine, "_load_one", classmethod(fake_load))
    # digits registered but its weights missing: tiny, after trying digits
    monkeypatch.setattr(framework.config, "preset_names", lambda group: ["digits", "tiny"])
    assert DemoEngine.load(None, tmp_path) == "tiny" and tried == ["digits", "tiny"]
    # digits not there at all (neither a preset nor a registered backbone): tiny, without trying digits
    tried.clear()
    monkeypatch.setattr(framework.config, "preset_names", lambda group: ["tiny"])
    from framework.registry import BACKBONES

    monkeypatch.setattr(BACKBONES, "names", lambda: ["tiny"])
    assert DemoEngine.load(None, tmp_path) == "tiny" and tried == ["tiny"]
    # an explicit --backbone is loaded as given, errors included
    tried.clear()
    with pytest.raises(WeightsNotFoundError):
        DemoEngine.load("digits", tmp_path)


def test_options_boxes_round_trip_and_reject_bad_yaml() -> None:
    text, guidance, doc = DemoEngine.preset_options("inverter", "ddpm_edit_friendly_reference")
    assert guidance == 3.5 and "ddpm_edit_friendly" in doc
    assert parse_options(text, "inverter") == {"eta": 1.0, "zero_last_noise": True, "timestep_batch": 1}
    # editors whose guidance defaults to the inversion's keep it in the box, not on the slider
    text, guidance, _ = DemoEngine.preset_options("editor", "shift")
    assert guidance is None and parse_options(text, "editor")["guidance_scale"] is None
    assert parse_options("", "editor") == {}
    with pytest.raises(ConfigError, match="editor options must be 'key: value' lines"):
        parse_options("- a\n- b", "editor")
    with pytest.raises(ConfigError, match="could not parse the inverter options"):
        parse_options("eta: [1", "inverter")


def test_compose_applies_presets_boxes_and_sliders(tmp_path: Path) -> None:
    engine = DemoEngine(backbone=None, backbone_cfg={"name": "tiny"}, backbone_name="tiny", out=tmp_path)
    req = EditRequest(
        image=None, source_prompt="a", target_prompts="b", inverter="cycle_diffusion_eta01",
        inverter_options="zero_last_noise: true", inverter_guidance=2.0, editor="prompt_to_prompt",
        editor_options="", editor_guidance=7.0, num_steps=20.0, skip=4.0, seed=3.0,
    )  # fmt: skip
    cfg = engine.compose(req)
    assert cfg["inverter"] == {
        "name": "cycle_diffusion", "eta": 0.1, "guidance_scale": 2.0, "zero_last_noise": True, "timestep_batch": 1
    }
    assert cfg["editor"]["name"] == "prompt_to_prompt" and cfg["editor"]["guidance_scale"] == 7.0
    assert (cfg["num_steps"], cfg["skip"], cfg["seed"]) == (20, 4, 3)
    with pytest.raises(InputError, match="seed must be a whole number"):
        engine.compose(EditRequest(**{**req.__dict__, "seed": 1.5}))
    with pytest.raises(ConfigError, match="unknown option 'etta'"):
        engine.compose(EditRequest(**{**req.__dict__, "inverter_options": "etta: 1"}))


def test_inversion_key_and_cache() -> None:
    args = ("abc", {"name": "tiny"}, "a cat", {"name": "ddpm_edit_friendly", "eta": 1.0}, 100, 36, 0)
    key = inversion_key(*args)
    assert key == inversion_key(*args)
    for i, other in enumerate(("abd", {"name": "tiny", "seed": 1}, "a dog", {"name": "ddim"}, 50, 12, 1)):
        changed = list(args)
        changed[i] = other
        assert inversion_key(*changed) != key, i
    cache = InversionCache(capacity=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert (cache.get("b"), cache.get("a"), cache.get("c"), len(cache)) == (None, 1, 3, 2)


def test_examples_come_from_the_shipped_data_lists(tmp_path: Path) -> None:
    examples = load_examples()
    # the digits model is the demo's default backbone: its example, in its grammar, comes first
    assert Path(examples[0]["image"]).name == "digit_seven.png"
    assert examples[0]["source"] == "a red seven on a black background"
    flower = [e for e in examples if Path(e["image"]).name == "flower.png"]
    assert len(flower) == 1 and flower[0]["source"] == "a pink flower with green leaves"
    assert flower[0]["targets"].splitlines() == ["a yellow flower with green leaves", "a pink flower made of paper"]
    assert all(Path(e["image"]).is_file() for e in examples)
    # a list entry whose image is missing is left out; an image no list names comes with empty prompts
    (tmp_path / "list.yaml").write_text(
        "- {init_img: gone.png, source_prompt: a}\n- {init_img: a.png, source_prompt: b}\n"
    )
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    found = [(Path(e["image"]).name, e["source"]) for e in load_examples(tmp_path)]
    assert found == [("a.png", "b"), ("b.png", "")]


def _request(**changes) -> EditRequest:
    fields = dict(
        image=None, source_prompt="a", target_prompts="b", inverter="ddpm_edit_friendly", inverter_options="",
        inverter_guidance=3.5, editor="plug_and_play", editor_options="", editor_guidance=7.5, num_steps=10,
        skip=3, seed=0,
    )  # fmt: skip
    fields.update(changes)
    return EditRequest(**fields)


def test_every_plugin_option_is_either_taken_from_the_page_or_a_server_file() -> None:
    """A new plugin option must be classified here before the page offers it."""
    import dataclasses

    from framework.registry import EDITORS, INVERTERS

    for registry in (INVERTERS, EDITORS):
        for name in registry.names():
            fields = {f.name for f in dataclasses.fields(registry.get(name).Options)}
            page, files = set(PAGE_OPTIONS.get(name, {})), set(SERVER_FILE_OPTIONS.get(name, ()))
            assert not page & files, name
            assert fields == page | files, (name, fields ^ (page | files))
    # the boxes show only what the page takes
    text, _, _ = DemoEngine.preset_options("editor", "color_strokes")
    shown = set(parse_options(text, "editor"))
    assert shown == {"strength", "start_step", "end_step", "clip_prediction", "guidance_scale"}
    text, _, _ = DemoEngine.preset_options("editor", "zero_shot")
    assert not {"source_sentences", "target_sentences"} & set(parse_options(text, "editor"))


def test_options_naming_files_presets_outside_the_list_and_plugin_switches_are_refused(tmp_path: Path) -> None:
    engine = DemoEngine(backbone=None, backbone_cfg={"name": "tiny"}, backbone_name="tiny", out=tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("the first line\n")
    messages = set()
    for path in (secret, tmp_path / "missing.txt"):
        with pytest.raises(ConfigError, match="'source_sentences' names a file and is not accepted") as info:
            engine.compose(_request(editor="zero_shot", editor_options=f"source_sentences: {path}"))
        messages.add(str(info.value))
    assert len(messages) == 1  # nothing depends on the file
    with pytest.raises(ConfigError, match="unknown inverter preset '../../x'; choose one of: "):
        engine.compose(_request(inverter="../../x"))
    with pytest.raises(ConfigError, match="choose the editor in its menu"):
        engine.compose(_request(editor_options="name: text"))
    with pytest.raises(ConfigError, match="'num_inner_steps' must be a number in 0..50 in the demo"):
        engine.compose(_request(inverter="null_text", inverter_options="num_inner_steps: 1000"))


def test_page_text_is_never_interpolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EF_DEMO_SECRET", "s3cret")
    engine = DemoEngine(backbone=None, backbone_cfg={"name": "tiny"}, backbone_name="tiny", out=tmp_path)
    tricky = ["${oc.env:EF_DEMO_SECRET}", "${oc.env:NOPE,red}", "???", "\\${x}", "${", "a ${num_steps} b"]
    for text in tricky:
        literal = LiteralText()
        cfg = engine.compose(_request(editor_options=yaml.safe_dump({"negative_prompt": text})), literal)
        assert cfg["editor"]["negative_prompt"] == text
        from framework.registry import EDITORS

        editor = engine.build_plugin(EDITORS, cfg["editor"], literal)
        assert editor.options.negative_prompt == text
    with pytest.raises(ConfigError) as info:
        engine.compose(_request(inverter_options="eta: ${oc.env:EF_DEMO_SECRET}"))
    assert "${oc.env:EF_DEMO_SECRET}" in str(info.value) and "s3cret" not in str(info.value)
    # nested values come back as typed
    literal = LiteralText()
    value = {"a": ["${x}", {"${k}": "???"}], "b": ("plain", 1)}
    assert literal.show(literal.hide(value)) == {"a": ["${x}", {"${k}": "???"}], "b": ["plain", 1]}


def test_numbers_from_the_page() -> None:
    assert as_int(2**70, "seed") == 2**70  # exact, not through a float
    assert as_int(3.0, "seed") == 3 and as_int(" 7 ", "seed") == 7
    for bad in (1.5, float("inf"), float("nan"), "x", None, True, [1]):
        with pytest.raises(InputError, match="seed must be a whole number"):
            as_int(bad, "seed")
    with pytest.raises(ConfigError, match="too large"):  # aliases count each time they are used
        parse_options(
            "a: &a [1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
            "c: [*b, *b, *b, *b, *b, *b, *b, *b]",
            "editor",
        )


def test_time_limit_stops_the_loops_at_their_next_step() -> None:
    from framework import progress

    with progress.time_limit(None):
        assert list(progress.steps(range(3), desc="x")) == [0, 1, 2]
    with progress.time_limit(3600):
        assert list(progress.steps(range(3), desc="x")) == [0, 1, 2]
    with progress.time_limit(0), pytest.raises(progress.TimeLimitExceeded, match="time limit of 0 s"):
        for _ in progress.steps(range(3), desc="x"):
            pass
    with progress.time_limit(0), progress.progress_bars(True):
        bar = progress.steps(range(3), desc="x", total=3)  # advanced by hand, as the batched inversion does
        with pytest.raises(progress.TimeLimitExceeded):
            bar.update(1)
        bar.close()
    assert list(progress.steps(range(2), desc="x")) == [0, 1]  # outside the block: no limit


def test_unfinished_output_folders_of_a_stopped_server_are_removed(tmp_path: Path) -> None:
    import os
    import time

    engine = DemoEngine(backbone=None, backbone_cfg={"name": "tiny"}, backbone_name="tiny", out=tmp_path, time_limit=60)
    runs = tmp_path / "runs"
    old, fresh, done = runs / f"{PARTIAL_PREFIX}old", runs / f"{PARTIAL_PREFIX}fresh", runs / "20260101-000000-done"
    for folder in (old, fresh, done):
        folder.mkdir(parents=True)
        (folder / "input.png").write_bytes(b"x")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert engine.remove_partial_outputs() == [old]
    assert not old.exists() and fresh.exists() and done.exists()


def test_prompts_the_text_encoder_cannot_take_are_refused_before_the_inversion(tmp_path: Path) -> None:
    """On digits (16 tokens), a too-long target and Plug-and-Play's reference negative prompt are
    refused with the CLI's message before any network evaluation."""
    from framework.backbone import load_backbone
    from framework.demo import InversionCache

    backbone = load_backbone("digits", device="cpu")
    engine = DemoEngine(backbone=backbone, backbone_cfg={"name": "digits"}, backbone_name="digits", out=tmp_path)
    image = Path(__file__).resolve().parent.parent / "data" / "digit_seven.png"
    source = "a red seven on a black background"
    long_target = "a blue seven on a black background " * 3
    cases = [
        (_request(image=str(image), source_prompt=source, target_prompts=long_target, editor="text"), InputError),
        (_request(image=str(image), source_prompt=source, target_prompts="a blue seven on a black background",
                  editor_options="negative_prompt: ugly, blurry, black, low res, unrealistic"),
         ConfigError),  # pnp-diffusers' negative prompt is 30 tokens
    ]
    for req, error in cases:
        backbone.nfe = 0
        with pytest.raises(error, match="tokens"):
            engine.run(req, InversionCache())
        assert backbone.nfe == 0
    assert not list((tmp_path / "runs").glob("*"))  # nothing written for a refused request
