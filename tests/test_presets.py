"""Presets carry their paper's run settings (num_steps, skip); explicit values win; a step count
alone keeps the skip's proportion; the experiment configs that rely on them plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from PIL import Image

from framework.cli import main
from framework.config import compose, config_dir, scaled_skip
from framework.errors import ConfigError
from framework.experiment.plan import expand_methods

EXPERIMENTS = config_dir() / "experiment"


def edit_config(tmp_path: Path, *args: str) -> dict:
    """Run ``editfriendly edit`` on the tiny backbone and read the saved config.yaml."""
    image = tmp_path / "in.png"
    if not image.exists():
        Image.new("RGB", (32, 32), (120, 60, 30)).save(image)
    out = tmp_path / "out"
    rc = main(["edit", "--image", str(image), "--source", "a box", "--target", "a red box",
               "--backbone", "tiny", "--out", str(out), "--no-progress", *args])
    assert rc == 0
    return yaml.safe_load((out / "config.yaml").read_text())


@pytest.mark.parametrize(
    ("skip", "steps", "new_steps", "want"),
    [
        (36, 100, 20, 7),  # 7.2 -> 7
        (36, 100, 50, 18),  # exactly 18
        (12, 100, 50, 6),
        (36, 100, 25, 9),  # exactly 9
        (1, 4, 2, 1),  # 0.5 rounds half up -> 1
        (3, 4, 2, 1),  # 1.5 -> 2, but at most new_steps - 1 = 1
        (0, 50, 20, 0),
        (36, 100, 1, 0),  # a single step cannot skip any
    ],
)
def test_scaled_skip_rounds_half_up_below_the_step_count(skip, steps, new_steps, want) -> None:
    assert scaled_skip(skip, steps, new_steps) == want


def test_edit_resolved_config_carries_the_preset_settings(tmp_path: Path) -> None:
    # the tiny backbone needs few steps: --steps 5 keeps the preset's 12 of 100 -> round(0.6) = 1
    cfg = edit_config(tmp_path, "--steps", "5", "editor=prompt_to_prompt_ef")
    assert (cfg["num_steps"], cfg["skip"]) == (5, 1)
    assert cfg["editor"]["name"] == "prompt_to_prompt" and cfg["editor"]["guidance_scale"] == 9
    assert "settings" not in cfg["editor"]  # stripped from the plugin options
    # --steps alone with the defaults: 36 of 100 -> 2 of 5 (1.8 rounds to 2)
    cfg = edit_config(tmp_path, "--steps", "5")
    assert (cfg["num_steps"], cfg["skip"]) == (5, 2)
    # an explicit skip wins over the preset, as a flag and as an override
    cfg = edit_config(tmp_path, "--steps", "5", "--skip", "3", "editor=prompt_to_prompt_ef")
    assert cfg["skip"] == 3
    cfg = edit_config(tmp_path, "--steps", "5", "skip=4", "editor=prompt_to_prompt_ef")
    assert cfg["skip"] == 4


def test_edit_resolved_config_carries_the_references_settings_of_the_three_newest_inverters(tmp_path: Path) -> None:
    """negative-prompt inversion as PnPInversion runs it (50 steps, targets at 7.5, P2P 0.4 / 0.6),
    EDICT as its code (inversion and edit at guidance 3, 50 steps, skip 10), null-text inversion
    with Prompt-to-Prompt as its notebook (50 steps, targets at 7.5, self replace 0.5)."""
    cfg = edit_config(tmp_path, "inverter=negative_prompt")
    assert (cfg["num_steps"], cfg["skip"]) == (50, 0)
    assert cfg["editor"] == {"name": "text", "guidance_scale": 7.5}
    assert cfg["inverter"] == {"name": "negative_prompt", "guidance_scale": 1.0, "steps_offset": 0}
    cfg = edit_config(tmp_path, "inverter=negative_prompt", "editor=prompt_to_prompt")
    p2p = cfg["editor"]
    assert (p2p["guidance_scale"], p2p["cross_replace_steps"], p2p["self_replace_steps"]) == (7.5, 0.4, 0.6)
    cfg = edit_config(tmp_path, "inverter=edict")
    assert (cfg["num_steps"], cfg["skip"]) == (50, 10)
    assert cfg["inverter"]["guidance_scale"] == 3.0 and cfg["editor"]["guidance_scale"] == 3.0
    assert cfg["inverter"]["steps_offset"] == 0  # EDICT's scheduler: 980 ... 0
    # one optimisation iteration per step keeps the run short; the settings checked are the preset's
    cfg = edit_config(tmp_path, "inverter=null_text", "editor=prompt_to_prompt", "inverter.num_inner_steps=1")
    p2p = cfg["editor"]
    assert (cfg["num_steps"], cfg["skip"]) == (50, 0) and cfg["inverter"]["guidance_scale"] == 7.5
    assert cfg["inverter"]["steps_offset"] is None  # the notebook's scheduler sets steps_offset=1, as ours
    assert (p2p["guidance_scale"], p2p["cross_replace_steps"], p2p["self_replace_steps"]) == (7.5, 0.8, 0.5)
    assert "editor" not in cfg["inverter"] and "_from_preset" not in cfg["editor"]


def test_inverter_carried_editor_options_yield_to_explicit_ones() -> None:
    def editor(*overrides: str, layers=()) -> dict:
        return dict(compose(overrides=overrides, extra_layers=list(layers)).editor)

    assert editor("inverter=negative_prompt", "editor.guidance_scale=9")["guidance_scale"] == 9
    assert editor("inverter=negative_prompt", "editor=prompt_to_prompt", "editor.self_replace_steps=0.2")[
        "self_replace_steps"] == 0.2
    # a mapping naming the plugin is explicit: its values stay, the others come from the inverter preset
    got = editor("inverter=edict", layers=[{"editor": {"name": "prompt_to_prompt", "cross_replace_steps": 0.3}}])
    assert (got["guidance_scale"], got["cross_replace_steps"]) == (3.0, 0.3)
    # an editor preset's values are presets too: the inverter's reference settings replace them
    assert editor("inverter=edict", "editor=prompt_to_prompt_ef")["guidance_scale"] == 3.0
    # options the editor does not have are left out (text has no replace steps)
    assert set(editor("inverter=negative_prompt")) == {"name", "guidance_scale"}
    # without the inverter preset nothing changes
    assert editor(layers=[{"inverter": {"name": "negative_prompt"}}])["guidance_scale"] == 15
    # the per-backbone block applies only to its backbone, and explicit values still win
    assert editor("inverter=negative_prompt", "backbone=digits")["guidance_scale"] == 1.5
    assert editor("inverter=negative_prompt", "backbone=tiny")["guidance_scale"] == 7.5
    assert editor("inverter=negative_prompt", "backbone=digits", "editor.guidance_scale=7.5")["guidance_scale"] == 7.5
    assert editor("backbone=digits")["guidance_scale"] == 7.5 and editor("backbone=tiny")["guidance_scale"] == 15


def test_methods_get_their_inverter_presets_editor_options(tmp_path: Path) -> None:
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        "backbone: {name: tiny}\n"
        "methods:\n"
        "  - {name: plain}\n"
        "  - {name: np, inverter: negative_prompt}\n"
        "  - {name: np_p2p, inverter: negative_prompt, editor: prompt_to_prompt}\n"
        "  - {name: np_own, inverter: negative_prompt, editor: {name: text, guidance_scale: 4}}\n"
    )
    plan = {v.label: v for v in expand_methods(compose(experiment=exp))}
    assert plan["plain"].editor["guidance_scale"] == 15
    assert (plan["np"].editor["guidance_scale"], plan["np"].num_steps, plan["np"].skip) == (7.5, 50, 0)
    assert plan["np_p2p"].editor["self_replace_steps"] == 0.6
    assert plan["np_own"].editor["guidance_scale"] == 4


def test_bad_backbones_and_editor_blocks_in_a_preset_are_refused(tmp_path: Path, monkeypatch) -> None:
    import shutil

    root = tmp_path / "configs"
    shutil.copytree(config_dir(), root)
    monkeypatch.setenv("EDITFRIENDLY_CONFIG_DIR", str(root))
    (root / "editor" / "odd.yaml").write_text("name: text\nbackbones: [digits]\n")
    with pytest.raises(ConfigError, match="backbones must map backbone names"):
        compose(overrides=["editor=odd"])
    (root / "editor" / "odd.yaml").write_text("name: text\nbackbones: {digits: {settings: {seed: 1}}}\n")
    with pytest.raises(ConfigError, match="unknown keys \\['seed'\\]"):
        compose(overrides=["editor=odd"])
    (root / "editor" / "odd.yaml").write_text("name: text\nbackbones: {digits: {strength: 2}}\n")
    with pytest.raises(ConfigError, match="unknown option 'strength'"):
        compose(overrides=["editor=odd", "backbone=digits"])
    (root / "inverter" / "odd.yaml").write_text("name: ddim\neditor: 3\n")
    with pytest.raises(ConfigError, match="editor must map editor options"):
        compose(overrides=["inverter=odd"])


def test_compose_preset_settings_and_precedence() -> None:
    def settings(*overrides: str, **flags: int) -> tuple[int, int]:
        cfg = compose(overrides=overrides, extra_layers=[flags])
        return int(cfg.num_steps), int(cfg.skip)

    assert settings() == (100, 36)
    assert settings("editor=prompt_to_prompt_ef") == (100, 12)
    assert settings(num_steps=20) == (20, 7)  # --steps 20 alone
    assert settings("num_steps=20") == (20, 7)
    assert settings("editor=prompt_to_prompt_ef", num_steps=50) == (50, 6)
    assert settings("editor=prompt_to_prompt_ef", "skip=20") == (100, 20)
    assert settings("editor=prompt_to_prompt_ef", skip=20) == (100, 20)
    assert settings("num_steps=20", skip=5) == (20, 5)  # flags and overrides are one layer
    assert settings("inverter=ddim") == (100, 0)
    assert settings("editor=prompt_to_prompt_ddim") == (100, 0)
    assert settings("inverter=ddim_reference") == (100, 0)
    assert settings("editor=zero_shot") == (50, 0)
    assert settings("editor=zero_shot_ef") == (50, 0)
    assert settings("editor=zero_shot_ef", num_steps=20) == (20, 0)
    assert settings("inverter=cycle_diffusion_reference") == (50, 10)
    # both carry settings: the editor preset's win, key by key
    assert settings("inverter=ddim", "editor=prompt_to_prompt_ef") == (100, 12)
    assert settings("inverter=cycle_diffusion_reference", "editor=prompt_to_prompt_ef") == (50, 12)
    # options of a preset can be changed without losing its settings
    assert settings("editor=prompt_to_prompt_ef", "editor.guidance_scale=7") == (100, 12)
    cfg = compose(extra_layers=[{"editor": {"preset": "prompt_to_prompt_ef", "guidance_scale": 7.5}}])
    assert (cfg.skip, cfg.editor.guidance_scale) == (12, 7.5) and "settings" not in cfg.editor
    # another plugin replaces the group, and its settings with it
    assert settings("editor=prompt_to_prompt_ef", "editor=text") == (100, 36)


def test_item_7_reference_presets() -> None:
    cfg = compose(overrides=["inverter=ddim_reference"])
    assert cfg.inverter.name == "ddim" and cfg.inverter.guidance_scale == 3.5 and cfg.skip == 0
    assert compose(overrides=["inverter=ddim"]).inverter.guidance_scale == 1.0
    cfg = compose(overrides=["inverter=cycle_diffusion_reference"])
    assert (cfg.inverter.name, cfg.inverter.guidance_scale, cfg.inverter.eta) == ("cycle_diffusion", 1.0, 0.1)
    assert compose(overrides=["inverter=cycle_diffusion"]).inverter.guidance_scale == 3.5


def test_experiment_file_keys_win_over_presets(tmp_path: Path) -> None:
    exp = tmp_path / "exp.yaml"
    exp.write_text("editor: prompt_to_prompt_ef\nskip: 30\n")
    assert compose(experiment=exp).skip == 30
    exp.write_text("editor: prompt_to_prompt_ef\nnum_steps: 50\n")
    cfg = compose(experiment=exp)
    assert (cfg.num_steps, cfg.skip) == (50, 6)
    # the command line rescales the experiment's skip when it sets only the steps
    exp.write_text("num_steps: 50\nskip: 10\n")
    cfg = compose(experiment=exp, overrides=["num_steps=20"])
    assert (cfg.num_steps, cfg.skip) == (20, 4)


def test_bad_settings_in_a_preset_are_refused(tmp_path: Path, monkeypatch) -> None:
    import shutil

    root = tmp_path / "configs"
    shutil.copytree(config_dir(), root)
    monkeypatch.setenv("EDITFRIENDLY_CONFIG_DIR", str(root))
    (root / "editor" / "odd.yaml").write_text("name: text\nsettings: {skip: 3, seed: 1}\n")
    with pytest.raises(ConfigError, match="unknown keys \\['seed'\\]"):
        compose(overrides=["editor=odd"])
    (root / "editor" / "odd.yaml").write_text("name: text\nsettings: {skip: -1}\n")
    with pytest.raises(ConfigError, match="non-negative integer"):
        compose(overrides=["editor=odd"])


def test_methods_plan_with_their_presets_settings(tmp_path: Path) -> None:
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        yaml.safe_dump(
            {
                "backbone": {"name": "tiny"},
                "methods": [
                    {"name": "p2p_ef", "inverter": "ddpm_edit_friendly", "editor": "prompt_to_prompt_ef"},
                    {"name": "p2p_ef_own", "editor": "prompt_to_prompt_ef", "skip": 20},
                    {"name": "p2p_ef_steps", "editor": "prompt_to_prompt_ef", "num_steps": 50},
                    {"name": "zs", "inverter": "ddim", "editor": "zero_shot"},
                    {"name": "zs_ef", "inverter": "ddpm_edit_friendly", "editor": "zero_shot_ef"},
                    {"name": "plain"},
                    {"name": "sweep", "editor": "prompt_to_prompt_ef", "sweep": {"skip": [8, 16]}},
                ],
            }
        )
    )
    cfg = compose(experiment=exp)
    plan = {v.label: (v.num_steps, v.skip) for v in expand_methods(cfg)}
    assert plan == {
        "p2p_ef": (100, 12),
        "p2p_ef_own": (100, 20),
        "p2p_ef_steps": (50, 6),
        "zs": (50, 0),
        "zs_ef": (50, 0),
        "plain": (100, 36),
        "sweep[skip=8]": (100, 8),
        "sweep[skip=16]": (100, 16),
    }
    # the saved record shows the resolved values per method, without the presets' settings key
    first = OmegaConf.to_container(cfg.methods[0])
    assert (first["num_steps"], first["skip"]) == (100, 12) and "settings" not in first["editor"]
    # a top-level editor preset reaches methods that do not name their own editor
    exp.write_text("editor: prompt_to_prompt_ef\nmethods: [{name: a}, {name: b, editor: text}]\n")
    plan = {v.label: (v.num_steps, v.skip) for v in expand_methods(compose(experiment=exp))}
    assert plan == {"a": (100, 12), "b": (100, 36)}
    # explicit top-level keys of the experiment file win over a method's presets ...
    exp.write_text("num_steps: 4\nskip: 1\nmethods: [{name: a, editor: zero_shot}, {name: b, skip: 2}]\n")
    plan = {v.label: (v.num_steps, v.skip) for v in expand_methods(compose(experiment=exp))}
    assert plan == {"a": (4, 1), "b": (4, 2)}


def test_method_override_of_steps_keeps_the_proportion() -> None:
    from framework.experiment.run import apply_method_overrides

    cfg = compose(extra_layers=[{"methods": [{"name": "a", "editor": "prompt_to_prompt_ef"}, {"name": "b"}]}])
    apply_method_overrides(cfg, ["methods.a.num_steps=50", "methods.1.num_steps=20"])
    assert [(m.num_steps, m.skip) for m in cfg.methods] == [(50, 6), (20, 7)]
    apply_method_overrides(cfg, ["methods.b.num_steps=10", "methods.1.skip=9"])
    assert (cfg.methods[1].num_steps, cfg.methods[1].skip) == (10, 9)


def _pie_bench_slice(root: Path) -> Path:
    """A one-entry PIE-Bench folder (mapping_file.json + annotation_images/)."""
    rel = "0_random_140/000000000000.jpg"
    (root / "annotation_images" / rel).parent.mkdir(parents=True)
    Image.new("RGB", (32, 32), (200, 100, 50)).save(root / "annotation_images" / rel)
    mapping = {
        "000000000000": {
            "image_path": rel,
            "original_prompt": "a [cat] on a mat",
            "editing_prompt": "a [dog] on a mat",
            "editing_instruction": "make the cat a dog",
            "editing_type_id": "0",
            "blended_word": "cat dog",
            "mask": [10, 20, 300, 40],
        }
    }
    (root / "mapping_file.json").write_text(json.dumps(mapping))
    return root / "mapping_file.json"


def test_pie_bench_experiment_plans_with_pie_bench_settings(tmp_path: Path) -> None:
    from framework.experiment.plan import build_metrics, metric_configs
    from framework.experiment.run import resolve_data_path
    from framework.registry import DATASETS

    mapping = _pie_bench_slice(tmp_path / "PIE-Bench_v1")
    exp = EXPERIMENTS / "pie_bench.yaml"
    assert exp.read_text().startswith("# editfriendly run pie_bench ")
    cfg = compose(experiment=exp, overrides=["backbone=tiny", f"data.path={mapping}"])
    (v,) = expand_methods(cfg)
    assert (v.num_steps, v.skip) == (50, 12)
    assert v.inverter == {"name": "ddpm_edit_friendly", "eta": 1.0, "guidance_scale": 1.0, "zero_last_noise": True,
                          "timestep_batch": 1}
    assert v.editor["name"] == "prompt_to_prompt" and v.editor["guidance_scale"] == 7.5
    assert (v.editor["cross_replace_steps"], v.editor["self_replace_steps"]) == (0.4, 0.6)
    assert v.editor["mode"] == "auto"  # replace vs. refine by word count, as their script
    assert [m["name"] for m in metric_configs(cfg)] == ["pie_bench"]
    build_metrics(metric_configs(cfg))  # options valid (weights load only at setup)
    data = resolve_data_path(OmegaConf.to_container(cfg.data), exp)
    items = DATASETS.build(data).items()
    assert [i.target_prompts for i in items] == [["a dog on a mat"]]


def test_paper_zero_shot_experiment_plans_and_runs(tmp_path: Path) -> None:
    exp = EXPERIMENTS / "paper_zero_shot.yaml"
    assert exp.read_text().startswith("# editfriendly run paper_zero_shot ")
    cfg = compose(experiment=exp)
    plan = {v.label: v for v in expand_methods(cfg)}
    assert set(plan) == {"zero_shot_ddim", "zero_shot_ours"}
    ddim, ours = plan["zero_shot_ddim"], plan["zero_shot_ours"]
    assert (ddim.num_steps, ddim.skip, ours.num_steps, ours.skip) == (50, 0, 50, 0)
    assert ddim.inverter["name"] == "ddim" and ours.inverter["name"] == "ddpm_edit_friendly"
    assert ddim.editor["cross_attention_guidance"] == 0.1 and ours.editor["cross_attention_guidance"] == 0.03
    # and it runs as written, on one image, with fewer steps (each keeps skip 0)
    data = tmp_path / "one.yaml"
    Image.new("RGB", (32, 32), (90, 140, 60)).save(tmp_path / "one.png")
    data.write_text("- init_img: one.png\n  source_prompt: a cat\n  target_prompts: [a dog]\n")
    out = tmp_path / "run"
    rc = main(["run", str(exp), "--no-progress", f"data.path={data}", f"output_dir={out}", "logger.name=none",
               "trainer.accelerator=cpu", "methods.zero_shot_ddim.num_steps=3", "methods.zero_shot_ours.num_steps=3"])
    assert rc == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert [(m["num_steps"], m["skip"]) for m in saved["methods"]] == [(3, 0), (3, 0)]
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 3  # header + one row per method


def test_every_preset_builds_from_group_node() -> None:
    """``group_node`` gives the plugin's options only: every shipped preset builds, with or
    without settings (``preset_node`` keeps them for composition)."""
    from framework.config import group_node, preset_names, preset_node
    from framework.registry import EDITORS, INVERTERS

    carrying = []
    for group, registry in (("inverter", INVERTERS), ("editor", EDITORS)):
        for name in preset_names(group):
            node = group_node(group, name)
            assert "settings" not in node
            registry.build(node)
            if "settings" in preset_node(group, name):
                carrying.append(name)
    assert {"prompt_to_prompt_ef", "prompt_to_prompt_ddim", "ddim", "zero_shot", "zero_shot_ef"} <= set(carrying)
