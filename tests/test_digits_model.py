"""The shipped ``digits`` model: it follows prompts, inversions are exact on it, and edits do what
they ask (the paper's claims, checked on a trained model). Shipped weights only; nothing trains.

Every threshold below sits well under the value measured on the shipped weights (stated beside
it; measured with these very cases, seeds and settings) and well above chance, so a broken
method fails while the seeds' luck does not.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from framework import digits as D
from framework.registry import EDITORS, INVERTERS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def digits():
    from framework.backbone import load_backbone

    return load_backbone("digits", device="cpu")


def test_loads_through_the_preset_and_folder_paths(digits) -> None:
    from framework.backbone import load_backbone
    from framework.config import backbone_config
    from plugins.backbones.digits import DIGITS_MODEL

    assert digits.resolution == 16 and digits.conditional and digits.pixel_space
    assert backbone_config(str(DIGITS_MODEL))["name"] == "text_pixel_ddpm"
    same = load_backbone(str(DIGITS_MODEL), device="cpu")
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cond = digits.encode_prompt(["a red seven on a black background"])
    torch.testing.assert_close(digits.predict_noise(x, 500, cond), same.predict_noise(x, 500, cond))
    size = sum(f.stat().st_size for f in DIGITS_MODEL.rglob("*") if f.is_file())
    assert size < 10 * 2**20  # "a few MB"


@pytest.mark.slow
def test_follows_prompts(digits) -> None:
    from framework.digits_eval import prompt_following

    rates = prompt_following(digits, n=50)
    print("prompt following", rates)
    # measured on these 50 held-out prompts (DDIM 50 steps, guidance 3): digit 1.00, fg 1.00,
    # bg 1.00 (the previous, 3000-step model: digit 0.70); chance: digit 0.1, fg 1/6, bg 1/6
    assert rates["digit"] >= 0.8, rates
    assert rates["fg"] >= 0.9, rates
    assert rates["bg"] >= 0.9, rates


@pytest.mark.parametrize("inverter", ["ddpm_edit_friendly", "cycle_diffusion"])
def test_exact_reconstruction(digits, inverter: str) -> None:
    from framework.digits_eval import edit_cases

    inv = INVERTERS.build({"name": inverter, "guidance_scale": 3.5})
    text = EDITORS.build({"name": "text", "guidance_scale": 3.5})
    for k, (image, source, _) in enumerate(edit_cases(2, "fg")):
        x0 = digits.encode_image(image)
        inversion = inv.invert(digits, x0, source, num_steps=100, skip=0, generator=torch.Generator().manual_seed(k))
        out = text.edit(digits, inversion, source, [source], skip=0)
        err = float((out - x0).abs().max())
        print(inverter, "reconstruction error", err)
        assert err <= 1e-4


def test_noise_space_editors_run_on_it(digits) -> None:
    """shift and color strokes (prompt-free noise-space editors) run on the text-conditional model."""
    from framework.digits_eval import edit_cases
    from plugins.editors.color_strokes import ColorStrokesEditor
    from plugins.editors.shift import ShiftEditor

    image, source, _ = edit_cases(1, "fg")[0]
    x0 = digits.encode_image(image)
    inv = INVERTERS.build({"name": "ddpm_edit_friendly", "guidance_scale": 3.5})
    inversion = inv.invert(digits, x0, source, num_steps=20, skip=0, generator=torch.Generator().manual_seed(0))
    same = ShiftEditor(ShiftEditor.Options(dx=0)).edit(digits, inversion, source, [source], skip=0)
    assert float((same - x0).abs().max()) <= 1e-4  # shift (0, 0) reproduces the input exactly
    moved = ShiftEditor(ShiftEditor.Options(dx=2, border="wrap")).edit(digits, inversion, source, [source], skip=0)
    assert float((moved - x0).abs().mean()) > 0.05
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :, :8] = 1
    colors = torch.tensor([50, 80, 220]).view(1, 3, 1, 1) / 127.5 - 1  # blue strokes on the left half
    strokes = ColorStrokesEditor(ColorStrokesEditor.Options(strength=2, start_step=2, end_step=10), mask,
                                 colors.expand(1, 3, 16, 16))
    out = strokes.edit(digits, inversion, source, [source], skip=0)
    blue = colors.view(3)
    left_before = (x0[0, :, :, :8] - blue[:, None, None]).norm(dim=0).mean()
    left_after = (out[0, :, :, :8] - blue[:, None, None]).norm(dim=0).mean()
    assert float(left_after) < float(left_before)


@pytest.mark.slow
def test_edit_friendly_fg_edits_reach_the_colour_and_keep_the_shape(digits) -> None:
    """Foreground-colour text edits from edit-friendly noise maps (skip 36, target guidance 7.5).

    The paper's second claim, that the same edit from a DDIM inversion keeps less of the shape, is
    too small on this model to show on 10 cases; the paired test below measures it on 60. What is
    asserted of DDIM here is that its reconstruction is inexact where edit-friendly's is exact.
    """
    from framework.digits_eval import edit_cases, edit_rates, run_edits

    cases = edit_cases(N_EDIT, "fg")
    text = EDITORS.build({"name": "text", "guidance_scale": 7.5})
    ef = edit_rates(cases, run_edits(digits, INVERTERS.build({"name": "ddpm_edit_friendly", "guidance_scale": 3.5}),
                                     text, cases, 100, 36))
    print("edit-friendly", ef)
    # measured: color_reached 0.9, fg read by the classifier 1.0, shape_iou 0.64; chance of a given
    # one of the 4 colours left: 0.25
    assert ef["color_reached"] >= 0.6, ef
    assert ef["attr_reached"] >= 0.7, ef
    assert ef["shape_iou"] >= 0.5, ef
    image, source, _ = cases[0]
    x0 = digits.encode_image(image)
    ddim = INVERTERS.build({"name": "ddim"}).invert(digits, x0, source, num_steps=100, skip=0)
    rec = EDITORS.build({"name": "text", "guidance_scale": 1.0}).edit(digits, ddim, source, [source], skip=0)
    print("DDIM reconstruction error", float((rec - x0).abs().max()))
    assert float((rec - x0).abs().max()) > 1e-2  # measured 0.047 (edit-friendly: <= 1e-9)


@pytest.mark.slow
def test_ddim_inversion_keeps_less_of_the_shape_than_edit_friendly(digits) -> None:
    """The paper's claim, paired on the same 60 held-out foreground-colour edits (50 steps, text
    editor, target guidance 7.5): edit-friendly (skip 18 of 50, the paper's 36 %) against DDIM
    inversion (skip 0). In 16×16 pixel space DDIM inversion is nearly exact (max error 0.05-0.09),
    so the gap is small but consistent. Measured on the shipped (6000-step) model: paired shape
    IoU difference 0.055 (standard deviation 0.132, standard error 0.017; positive in 37 of 60);
    the previous 3000-step model gave 0.063. The bound below is about 2 standard errors under the
    measured mean."""
    from framework.digits_eval import edit_cases, run_edits
    from framework.metrics import MetricInput
    from plugins.metrics.shape_iou import ShapeIoUMetric

    cases = edit_cases(60, "fg")
    text = EDITORS.build({"name": "text", "guidance_scale": 7.5})
    shape = ShapeIoUMetric()

    def ious(inverter: dict, skip: int) -> torch.Tensor:
        edits = run_edits(digits, INVERTERS.build(inverter), text, cases, 50, skip)
        return torch.tensor([
            shape.compute(MetricInput(source_image=c[0], edited_images=e[None], source_prompt=c[1],
                                      target_prompts=[c[2]]))[0]["shape_iou"]
            for c, e in zip(cases, edits)
        ])

    diff = ious({"name": "ddpm_edit_friendly"}, 18) - ious({"name": "ddim"}, 0)
    print(f"paired shape IoU difference: mean {diff.mean():.3f}, sd {diff.std():.3f}, positive {(diff > 0).sum()}/60")
    assert diff.mean() > 0.02, diff


@pytest.mark.slow
@pytest.mark.parametrize("editor", ["text", "prompt_to_prompt", "plug_and_play", "zero_shot", "sdedit"])
def test_every_prompt_driven_editor_reaches_the_target(digits, editor: str) -> None:
    from framework.digits_eval import edit_cases, edit_rates, run_edits

    cases = edit_cases(N_EDITOR, "fg")
    inv = INVERTERS.build({"name": "ddpm_edit_friendly", "guidance_scale": 3.5})
    skip = {"text": 18, "prompt_to_prompt": 6, "plug_and_play": 0, "zero_shot": 0, "sdedit": 18}[editor]
    guidance = 5.0 if editor == "zero_shot" else 7.5
    extra = {"plug_and_play": {"negative_prompt": ""},  # its SD negative prompt has 30 tokens; this model takes 16
             "zero_shot": {"negative_prompt": "empty", "attention_guidance": "conditional"}}.get(editor, {})
    ed = EDITORS.build({"name": editor, "guidance_scale": guidance, **extra})
    rates = edit_rates(cases, run_edits(digits, inv, ed, cases, 50, skip))
    print(editor, rates)
    # chance: 0.25 (one of the four colours other than the source's fg and bg). Measured on these
    # 8 cases (50 steps): every editor read as the target colour 8/8; shape IoU text 0.61,
    # prompt_to_prompt 0.75, plug_and_play 0.53, zero_shot 0.73, sdedit 0.51
    assert rates["attr_reached"] >= 0.6, rates


@pytest.mark.slow
def test_null_text_and_negative_prompt_close_most_of_ddims_gap_at_guidance_7_5(digits) -> None:
    """Regenerating at guidance 7.5 from a DDIM inversion (pivot at guidance 1) drifts far from
    x0; null-text's optimised unconditional embeddings and negative-prompt inversion's source
    embedding bring it back. Measured (max |x0 - x̂0|, 20 steps, held-out 1510 and 1520):
    DDIM 0.434 / 0.644, null-text 0.129 / 0.245, negative-prompt 0.150 / 0.165. On this model
    negative-prompt inversion is about as good as null-text inversion, not between it and DDIM."""
    for idx, fg, bg in ((1510, "blue", "white"), (1520, "green", "yellow")):
        x0 = digits.encode_image(D.render_indices([idx], [fg], [bg], 16))
        source = D.prompt(int(D.labels([idx])[0]), fg, bg)
        err = {}
        for name in ("ddim", "null_text", "negative_prompt"):
            inv = INVERTERS.build({"name": name}).invert(digits, x0, source, num_steps=20, skip=0)
            rec = EDITORS.build({"name": "text", "guidance_scale": 7.5}).edit(digits, inv, source, [source], skip=0)
            err[name] = float((rec - x0).abs().max())
        print(idx, "reconstruction error at guidance 7.5", err)
        assert err["null_text"] < 0.5 * err["ddim"], err
        assert err["negative_prompt"] < 0.5 * err["ddim"], err


def test_plug_and_play_default_negative_prompt_names_the_option_on_a_small_text_encoder(digits) -> None:
    """pnp-diffusers' default negative prompt (30 tokens) does not fit this model's 16: the
    error names the option and the fix instead of the prompt the user never typed."""
    from framework.errors import InputError

    x0 = digits.encode_image(D.render_indices([1500], ["red"], ["black"], 16))
    source, target = "a red seven on a black background", "a blue seven on a black background"
    inv = INVERTERS.build({"name": "ddpm_edit_friendly"}).invert(digits, x0, source, num_steps=6, skip=0)
    with pytest.raises(InputError, match=r"plug_and_play\.negative_prompt .*editor\.negative_prompt=''"):
        EDITORS.build({"name": "plug_and_play"}).edit(digits, inv, source, [target], skip=0)
    out = EDITORS.build({"name": "plug_and_play", "negative_prompt": ""}).edit(digits, inv, source, [target], skip=0)
    assert out.shape == x0.shape


@pytest.mark.slow
def test_benchmark_config_runs_and_compare_draws_the_tradeoff(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "bench"
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "framework.cli", "run", "digits_bench", f"output_dir={out}", "data.limit=1",
           "data.edits=[fg]", "--no-progress"]
    subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True, text=True)
    rows = list(csv.DictReader(open(out / "results.csv")))
    methods = {r["method"] for r in rows}
    assert methods == {"ef_text", "cycle_text", "ddim_text", "ddim_early_text", "ef_p2p", "ddim_p2p", "ef_pnp",
                       "ddim_pnp", "ddim_zero_shot", "ef_zero_shot", "sdedit", "nt_p2p", "np_p2p", "np_text",
                       "edict_text"}
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["status"] != "ok"]
    assert all(r["shape_iou"] and r["color_reached"] and r["attr_reached"] for r in rows)
    report = subprocess.run([sys.executable, "-m", "framework.cli", "compare", str(out), "--sample", "1"],
                            cwd=tmp_path, env=env, check=True, capture_output=True, text=True)
    scatter = out / "compare" / "scatter_color_reached_vs_shape_iou.png"
    assert scatter.exists() and scatter.stat().st_size > 1000, report.stdout


# ----------------------------------------------------------------------------- sizes
N_EDIT = 10
N_EDITOR = 8
