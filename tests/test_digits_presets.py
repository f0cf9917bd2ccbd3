"""Every shipped inverter and editor preset on the shipped ``digits`` model, through
``editfriendly edit``, on the first edit of the README (the red seven of ``data/digit_seven.png``
made blue): it edits the seven, or refuses with one ``error:`` line naming the option to set.

"Edits the seven": the blue of the target is reached over the seven's strokes (``color_reached``)
and the digit's shape is kept (``shape_iou`` >= 0.6). Measured on this model: good edits keep
0.75-0.86 of the shape, while a colour pushed too far gives a blue blob of IoU 0.40-0.47 (what
``inverter=negative_prompt``, ``editor=zero_shot`` and ``editor=zero_shot_ef`` gave before
their presets carried digits settings); 0.6 lies between the two. Each case is one inversion
and one edit of a 16x16 image (a few seconds; null-text inversion about ten).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from framework.cli import main
from framework.config import preset_names
from framework.metrics import MetricInput

ROOT = Path(__file__).resolve().parent.parent
SEVEN = ROOT / "data" / "digit_seven.png"
SOURCE = "a red seven on a black background"
TARGET = "a blue seven on a black background"
MIN_SHAPE_IOU = 0.6

#: every inverter preset with the default editor, every editor preset with the default
#: inverter, and the combinations the presets' own comments name
CASES = [
    ("inverter=ddim_pix2pix_zero", "editor=zero_shot"),
    ("inverter=ddim", "editor=zero_shot"),
    ("inverter=ddpm_edit_friendly", "editor=zero_shot_ef"),
    ("inverter=negative_prompt", "editor=prompt_to_prompt"),
    ("inverter=null_text", "editor=prompt_to_prompt"),
    ("inverter=ddim_reference", "editor=prompt_to_prompt_ddim"),
    ("inverter=edict", "editor=prompt_to_prompt"),
]
CASES += [(f"inverter={name}",) for name in preset_names("inverter")]
CASES += [(f"editor={name}",) for name in preset_names("editor")]

#: presets that need an input only the user can give: they must refuse with one line naming it
NEEDS_INPUT = {("editor=color_strokes",): "editor.strokes="}
#: presets of flow models only: on the DDPM digits model they refuse with one line naming the flow
#: backbones (the same edit on `--backbone digits_flow`: tests/test_digits_flow.py)
NEEDS_INPUT[("editor=flowedit",)] = "digits_flow"

#: presets that keep only about half of the seven's shape on this model (measured shape IoU,
#: colour reached in each): not a blob of the target colour, and no guidance tried keeps more
#: (DDIM inversion at source guidance 3.5 with P2P: 0.51 at target guidance 5, 0.54 at 7.5 and 9;
#: CycleDiffusion at eta 0.1: 0.55 at 3, 0.53 at 5, 0.50 at 7.5; its reference settings 0.60 at 3,
#: 0.59 at 5, 0.53 at 7.5). Strict: a change that makes them pass must move them to CASES' checks.
PARTIAL = {
    ("inverter=ddim_reference", "editor=prompt_to_prompt_ddim"): 0.545,
    ("inverter=cycle_diffusion_eta01",): 0.495,
    ("inverter=cycle_diffusion_reference",): 0.531,
    ("inverter=null_text",): 0.583,  # with the text editor; with Prompt-to-Prompt 0.75
    ("editor=plug_and_play",): 0.576,
}


def _param(case: tuple[str, ...]):
    marks = ()
    if case in PARTIAL:
        reason = f"keeps about half the shape on digits (measured {PARTIAL[case]})"
        marks = pytest.mark.xfail(strict=True, reason=reason)
    return pytest.param(case, id=" ".join(case), marks=marks)


def _load(path: Path) -> torch.Tensor:
    a = np.asarray(Image.open(path).convert("RGB")).astype(np.float32) / 127.5 - 1
    return torch.from_numpy(a).permute(2, 0, 1)[None]


def shape_and_colour(edited: Path) -> dict:
    from plugins.metrics.shape_iou import ShapeIoUMetric

    batch = MetricInput(source_image=_load(SEVEN), edited_images=_load(edited), source_prompt=SOURCE,
                        target_prompts=[TARGET])
    return ShapeIoUMetric().compute(batch)[0]


def run_edit(out: Path, *overrides: str) -> int:
    return main(["edit", "--backbone", "digits", "--image", str(SEVEN), "--source", SOURCE, "--target", TARGET,
                 "--out", str(out), "--no-progress", *overrides])


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [_param(c) for c in CASES])
def test_every_preset_edits_the_seven_or_names_the_setting(overrides, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    rc = run_edit(out, *overrides)
    err = capsys.readouterr().err
    if overrides in NEEDS_INPUT:
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("error:"), err
        assert NEEDS_INPUT[overrides] in lines[0], err
        return
    assert rc == 0, err
    (edited,) = out.glob("*blue-seven*.png")
    measured = shape_and_colour(edited)
    assert measured["color_reached"] == 1.0, measured
    assert measured["shape_iou"] >= MIN_SHAPE_IOU, measured


def test_the_digits_settings_of_the_presets_reach_the_resolved_config(tmp_path: Path) -> None:
    """What the presets' ``backbones: {digits: ...}`` blocks set, in the saved config.yaml of a
    real (short) run, and that an explicit value still wins."""
    import yaml

    def saved(*overrides: str) -> dict:
        out = tmp_path / "_".join(o.replace("=", "-") for o in overrides)
        assert run_edit(out, "--steps", "4", *overrides) == 0
        return yaml.safe_load((out / "config.yaml").read_text())

    assert saved()["editor"] == {"name": "text", "guidance_scale": 7.5}
    assert saved("editor.guidance_scale=15")["editor"]["guidance_scale"] == 15
    cfg = saved("inverter=negative_prompt", "editor=prompt_to_prompt")
    assert (cfg["editor"]["guidance_scale"], cfg["editor"]["self_replace_steps"]) == (1.5, 0.6)
    assert saved("inverter=negative_prompt", "editor.guidance_scale=7.5")["editor"]["guidance_scale"] == 7.5
    assert saved("editor=zero_shot")["editor"]["negative_prompt"] == "empty"
    assert saved("editor=zero_shot", "editor.negative_prompt=source")["editor"]["negative_prompt"] == "source"
