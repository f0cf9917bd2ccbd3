"""Noise-space manipulations: shift, color strokes, SDEdit (section 3.2 of the paper)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from framework.errors import InputError
from framework.images import load_image_tensor
from framework.random import make_generator
from framework.registry import EDITORS, INVERTERS

N = 20  # inference steps in these tests (pixel model)
N_SD = 10  # for the (slower) tiny Stable Diffusion


def invert(backbone, x0, prompt="", steps=N, skip=0, seed=0):
    inverter = INVERTERS.build({"name": "ddpm_edit_friendly"})
    return inverter.invert(backbone, x0, prompt, num_steps=steps, skip=skip, generator=make_generator(seed))


@pytest.fixture(scope="module")
def pixel_x0(tiny_pixel, photo_path):
    """The real photo as the pixel model's x0, (1, 3, 16, 16)."""
    return tiny_pixel.encode_image(load_image_tensor(photo_path, tiny_pixel.resolution, tiny_pixel.size_multiple))


@pytest.fixture(scope="module")
def pixel_inv(tiny_pixel, pixel_x0):
    return invert(tiny_pixel, pixel_x0)


@pytest.fixture(scope="module")
def sd_inv(tiny, photo_x0):
    return invert(tiny, photo_x0, "a photo of a flower", steps=N_SD)


def red_strokes(res: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A rectangle mask (1, 1, res, res) and pure red colors (1, 3, res, res)."""
    mask = torch.zeros(1, 1, res, res)
    mask[..., res // 4 : 3 * res // 4, res // 8 : res // 2] = 1
    colors = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, res, res).clone()
    return mask, colors


def color_editor(mask=None, colors=None, **opts):
    cls, options = EDITORS.options({"name": "color_strokes", **opts})
    return cls(options, mask=mask, colors=colors)


# ----------------------------------------------------------------------------- 1. identities
@pytest.mark.parametrize("border", ["noise", "reflect", "wrap"])
def test_shift_zero_reproduces_input_pixel(tiny_pixel, pixel_x0, pixel_inv, border):
    editor = EDITORS.build({"name": "shift", "dx": 0, "dy": 0, "border": border})
    out = editor.edit(tiny_pixel, pixel_inv, "", [""], skip=0, generator=make_generator(1))
    assert out.shape == (1, 3, 16, 16)
    assert (out - pixel_x0).abs().max().item() <= 1e-4


def test_shift_zero_and_strength_zero_reproduce_input_tiny_sd(tiny, photo_x0, sd_inv):
    shift = EDITORS.build({"name": "shift"})
    out = shift.edit(tiny, sd_inv, "a photo of a flower", ["a photo of a flower"], skip=0)
    assert (out - photo_x0).abs().max().item() <= 1e-4
    mask, colors = red_strokes(32)
    strokes = color_editor(mask, colors, strength=0.0, start_step=1, end_step=N_SD)
    out = strokes.edit(tiny, sd_inv, "a photo of a flower", ["a photo of a flower"], skip=0)
    assert out.shape == photo_x0.shape
    assert (out - photo_x0).abs().max().item() <= 1e-4


def test_strength_zero_reproduces_input_pixel_with_skip(tiny_pixel, pixel_x0):
    inv = invert(tiny_pixel, pixel_x0, skip=6)
    mask, colors = red_strokes(16)
    out = color_editor(mask, colors, strength=0.0, start_step=1, end_step=N).edit(
        tiny_pixel, inv, "", ["", ""], skip=6
    )
    assert out.shape == (2, 3, 16, 16)  # one row per target, prompts ignored
    assert (out - pixel_x0).abs().max().item() <= 1e-4


# ----------------------------------------------------------------------------- 2. what is touched
def _capture_reverse(monkeypatch, module):
    """Replace the module's reverse loop; record the rule's start latents, maps and step."""
    calls = {}

    def fake(backbone, rule, start_step, guidance, hooks=(), desc="edit"):
        zs = rule.zs
        calls.update(x_start=rule.x.clone(), zs=None if zs is None else zs.clone(), start=start_step)
        return rule.x

    monkeypatch.setattr(module, "denoise", fake)
    return calls


@pytest.mark.parametrize("dx,dy", [(3, 0), (0, -2), (-4, 5)])
def test_shift_moves_x_start_and_every_map_exactly(tiny_pixel, pixel_inv, monkeypatch, dx, dy):
    import plugins.editors.shift as shift_module

    calls = _capture_reverse(monkeypatch, shift_module)
    skip = 4
    start = N - skip
    x_ref, zs_ref = pixel_inv.x_at(start), pixel_inv.zs[:start]
    h, w = x_ref.shape[-2:]
    ys, xs = slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0))
    ys0, xs0 = slice(max(-dy, 0), h + min(-dy, 0)), slice(max(-dx, 0), w + min(-dx, 0))
    covered = torch.zeros(h, w, dtype=torch.bool)
    covered[ys, xs] = True

    # wrap: a circular shift of everything
    EDITORS.build({"name": "shift", "dx": dx, "dy": dy, "border": "wrap"}).edit(
        tiny_pixel, pixel_inv, "", [""], skip=skip
    )
    assert calls["start"] == start
    assert torch.equal(calls["x_start"], torch.roll(x_ref, (dy, dx), (-2, -1)))
    assert torch.equal(calls["zs"], torch.roll(zs_ref, (dy, dx), (-2, -1)))

    # reflect: the covered part moves, the strip mirrors the content beside it
    EDITORS.build({"name": "shift", "dx": dx, "dy": dy, "border": "reflect"}).edit(
        tiny_pixel, pixel_inv, "", [""], skip=skip
    )
    pad = ((0, 0),) * 3 + ((max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0)))
    expect = np.pad(zs_ref.numpy(), pad, mode="reflect")[
        ..., max(-dy, 0) : max(-dy, 0) + h, max(-dx, 0) : max(-dx, 0) + w
    ]
    assert torch.equal(calls["zs"], torch.from_numpy(expect))
    assert torch.equal(calls["x_start"][..., ys, xs], x_ref[..., ys0, xs0])

    # noise: the covered part moves exactly, the strip is fresh N(0, 1) (x_start: its noise level)
    EDITORS.build({"name": "shift", "dx": dx, "dy": dy, "border": "noise"}).edit(
        tiny_pixel, pixel_inv, "", [""], skip=skip, generator=make_generator(5)
    )
    assert torch.equal(calls["x_start"][..., ys, xs], x_ref[..., ys0, xs0])
    assert torch.equal(calls["zs"][..., ys, xs], zs_ref[..., ys0, xs0])
    strip = calls["zs"][..., ~covered]
    assert strip.numel() >= 16 * 3 * 16 * 2
    assert abs(strip.mean().item()) < 0.1 and 0.85 < strip.std().item() < 1.15
    # fresh noise, not the maps' own values that were shifted out
    assert not torch.equal(strip, zs_ref[..., ~covered])


def test_shift_rejects_bad_border_and_too_large_shift(tiny_pixel, pixel_inv):
    from framework.errors import ConfigError

    with pytest.raises(InputError, match="border"):
        EDITORS.build({"name": "shift", "dx": 1, "border": "zeros"}).edit(tiny_pixel, pixel_inv, "", [""], skip=0)
    with pytest.raises(InputError, match="smaller than"):
        EDITORS.build({"name": "shift", "dx": 16}).edit(tiny_pixel, pixel_inv, "", [""], skip=0)
    with pytest.raises(ConfigError, match="dz"):
        EDITORS.build({"name": "shift", "dz": 1})


def test_color_strokes_touch_maps_only_inside_mask_and_step_range(tiny_pixel, pixel_inv):
    """Record the noise of every step of a real edit through the editor's noise function."""
    mask, colors = red_strokes(16)
    lo, hi, s = 5, 12, 0.7
    editor = color_editor(mask, colors, strength=s, start_step=lo, end_step=hi, clip_prediction=False)
    records = []
    make = editor.noise_function

    def recording(schedule, *args, **kw):
        fn = make(schedule, *args, **kw)

        def wrapped(i, x, eps, z):
            out = fn(i, x, eps, z)
            records.append((i, x.clone(), eps.clone(), z.clone(), out.clone(), schedule))
            return out

        return wrapped

    editor.noise_function = recording  # type: ignore[method-assign]
    editor.edit(tiny_pixel, pixel_inv, "", [""], skip=0, generator=make_generator(0))
    assert [r[0] for r in records] == list(range(N, 0, -1))
    inside = mask.bool().expand(1, 3, 16, 16)
    for i, x, eps, z_in, z_out, schedule in records:
        diff = z_out - z_in
        assert torch.equal(z_in, pixel_inv.zs[i - 1].expand_as(z_in))  # the inversion's maps come in
        assert diff[~inside].abs().max().item() == 0.0  # never outside the mask
        if lo <= i <= hi:
            expected = s * (colors - schedule.predict_x0(x, eps, i))
            torch.testing.assert_close(diff[inside], expected[inside], rtol=1e-5, atol=1e-5)
            assert diff[inside].abs().max().item() > 0
        else:
            assert diff.abs().max().item() == 0.0  # never outside [T1, T2]


# ----------------------------------------------------------------------------- 3. the effect
def test_color_strokes_move_masked_color_toward_target(tiny_pixel, pixel_x0):
    """On the tiny pixel model the masked mean color moves toward M, and far more than outside."""
    skip = 14  # the random model is a poor denoiser: start the edit at moderate noise
    inv = invert(tiny_pixel, pixel_x0, skip=skip)
    mask, colors = red_strokes(16)
    out = color_editor(mask, colors, strength=1.0, start_step=1, end_step=N).edit(
        tiny_pixel, inv, "", [""], skip=skip
    )
    m = mask.bool()[0, 0]

    def mean_color(img, where):
        return img[0][:, where].mean(1)

    target = colors[0, :, 0, 0]
    before = (mean_color(pixel_x0, m) - target).norm().item()
    after = (mean_color(out, m) - target).norm().item()
    assert after < 0.6 * before
    change_in = (out - pixel_x0)[0][:, m].abs().mean().item()
    change_out = (out - pixel_x0)[0][:, ~m].abs().mean().item()
    assert change_in > 3 * change_out
    # the red channel rises inside the mask
    assert mean_color(out, m)[0] > mean_color(pixel_x0, m)[0] + 0.2


def test_color_strokes_on_latent_model_brings_strokes_to_latent_grid(tiny, photo_x0, sd_inv):
    from plugins.editors.color_strokes import to_model_space

    mask, colors = red_strokes(32)
    small, m = to_model_space(tiny, photo_x0, mask, colors)
    assert small.shape == (1, 1, 16, 16) and m.shape == (1, 4, 16, 16)
    assert torch.equal(small, torch.nn.functional.avg_pool2d(mask, 2).ge(0.5).float())
    out = color_editor(mask, colors, strength=1.0, start_step=1, end_step=6).edit(
        tiny, sd_inv, "a photo of a flower", ["a photo of a flower", "a photo of a red flower"], skip=0
    )
    assert out.shape == (2, 4, 16, 16) and torch.isfinite(out).all()
    # unmodified steps above T2 and the mask region: the edit differs from the input
    assert (out[0] - photo_x0[0]).abs().max() > 1e-3


# ----------------------------------------------------------------------------- stroke files
def test_strokes_file_defines_mask_and_colors(tmp_path):
    from plugins.editors.color_strokes import load_stroke_files

    arr = np.zeros((40, 40, 4), dtype=np.uint8)
    arr[10:20, 5:15] = (0, 255, 0, 255)
    path = tmp_path / "strokes.png"
    Image.fromarray(arr, "RGBA").save(path)
    mask, colors = load_stroke_files((20, 20), strokes=str(path))
    assert mask.shape == (1, 1, 20, 20) and colors.shape == (1, 3, 20, 20)
    assert mask.sum().item() == 25
    assert torch.equal(colors[0, :, mask[0, 0].bool()].unique(dim=1), torch.tensor([[-1.0], [1.0], [-1.0]]))
    Image.fromarray(arr[..., :3], "RGB").save(tmp_path / "opaque.png")
    with pytest.raises(InputError, match="transparency"):
        load_stroke_files((20, 20), strokes=str(tmp_path / "opaque.png"))
    with pytest.raises(InputError, match="not found"):
        load_stroke_files((20, 20), strokes=str(tmp_path / "missing.png"))
    with pytest.raises(InputError, match="mask=FILE"):
        load_stroke_files((20, 20))
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(InputError, match="empty"):
        load_stroke_files((20, 20), mask=str(tmp_path / "empty.png"), colors=str(tmp_path / "opaque.png"))


def test_color_strokes_from_files_and_bad_ranges(tiny_pixel, pixel_inv, tmp_path):
    arr = np.zeros((16, 16, 4), dtype=np.uint8)
    arr[4:12, 2:8] = (255, 0, 0, 255)
    Image.fromarray(arr, "RGBA").save(tmp_path / "s.png")
    out = EDITORS.build({"name": "color_strokes", "strokes": str(tmp_path / "s.png"), "start_step": 1, "end_step": 5})
    res = out.edit(tiny_pixel, pixel_inv, "", [], skip=0)
    assert res.shape == (1, 3, 16, 16)
    with pytest.raises(InputError, match="start_step"):
        EDITORS.build(
            {"name": "color_strokes", "strokes": str(tmp_path / "s.png"), "start_step": 9, "end_step": 3}
        ).edit(tiny_pixel, pixel_inv, "", [""], skip=0)
    with pytest.raises(InputError, match="above the edit's first step"):
        EDITORS.build({"name": "color_strokes", "strokes": str(tmp_path / "s.png"), "start_step": 19}).edit(
            tiny_pixel, pixel_inv, "", [""], skip=5
        )


# ----------------------------------------------------------------------------- SDEdit
def test_sdedit_paints_strokes_and_follows_them(tiny_pixel, pixel_x0, pixel_inv):
    mask, colors = red_strokes(16)
    cls, opts = EDITORS.options({"name": "sdedit", "start_step": 1})
    editor = cls(opts, mask=mask, colors=colors)
    painted = editor.edited_x0(tiny_pixel, pixel_x0)
    expect = mask * colors + (1 - mask) * pixel_x0
    assert torch.allclose(painted, expect)
    # one step from the least noisy level: close to the painted input
    out = editor.edit(tiny_pixel, pixel_inv, "", ["", ""], skip=0, generator=make_generator(3))
    assert out.shape == (2, 3, 16, 16)
    assert (out - expect).abs().mean().item() < 0.05
    # from a noisier step the two rows get independent fresh noise
    cls, opts = EDITORS.options({"name": "sdedit", "strength": 0.5})
    out = cls(opts, mask=mask, colors=colors).edit(
        tiny_pixel, pixel_inv, "", ["", ""], skip=0, generator=make_generator(3)
    )
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_sdedit_step_choice(tiny, sd_inv):
    from plugins.editors.sdedit import SDEditEditor, SDEditOptions

    assert SDEditEditor(SDEditOptions()).first_step(100, 36) == 64
    assert SDEditEditor(SDEditOptions(strength=0.3)).first_step(100, 36) == 30
    assert SDEditEditor(SDEditOptions(start_step=7)).first_step(100, 36) == 7
    with pytest.raises(InputError, match="not both"):
        SDEditEditor(SDEditOptions(strength=0.3, start_step=7)).first_step(100, 0)
    with pytest.raises(InputError, match="strength"):
        SDEditEditor(SDEditOptions(strength=1.5)).first_step(100, 0)
    out = SDEditEditor(SDEditOptions(strength=0.25)).edit(tiny, sd_inv, "a photo", ["a photo of a cat"], skip=0)
    assert out.shape == (1, 4, 16, 16) and torch.isfinite(out).all()


# ----------------------------------------------------------------------------- unconditional models
def test_prompt_driven_editor_rejects_unconditional_backbone(tiny_pixel, pixel_inv):
    editor = EDITORS.build({"name": "text"})
    with pytest.raises(InputError, match="unconditional"):
        editor.edit(tiny_pixel, pixel_inv, "", ["a photo of a dog"], skip=0)
