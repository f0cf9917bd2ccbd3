"""The SD3 backbone (tiny random weights, no T5) against diffusers' StableDiffusion3Pipeline, and
the methods that run on a flow model: edit-friendly inversion, FlowEdit, SDEdit with ``none``."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

from framework.errors import InputError
from framework.registry import EDITORS, INVERTERS
from framework.sampling import reverse_process

SOURCE = "a photo of a cat"
TARGET = "a painting of a dog"


@pytest.fixture(scope="module")
def sd3(_tiny_cache):
    from framework.backbone import load_backbone

    return load_backbone("tiny_sd3", device="cpu")


@pytest.fixture(scope="module")
def pipe(sd3):
    """diffusers' pipeline over the same components (a scheduler of its own), T5 absent."""
    return StableDiffusion3Pipeline(
        transformer=sd3.transformer,
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(sd3.scheduler.config),
        vae=sd3.vae,
        text_encoder=sd3.text_encoder,
        tokenizer=sd3.tokenizer,
        text_encoder_2=sd3.text_encoder_2,
        tokenizer_2=sd3.tokenizer_2,
        text_encoder_3=None,
        tokenizer_3=None,
    )


@pytest.fixture(scope="module")
def x0(sd3, photo_path):
    from framework.images import load_image_tensor

    return sd3.encode_image(load_image_tensor(photo_path, sd3.resolution, sd3.size_multiple))


def _invert(backbone, x0, name="ddpm_edit_friendly", steps=6, skip=0, **opts):
    inverter = INVERTERS.build({"name": name, **opts})
    return inverter.invert(backbone, x0, SOURCE, num_steps=steps, skip=skip, generator=torch.Generator().manual_seed(0))


def test_conditioning_equals_the_pipelines_encode_prompt(sd3, pipe) -> None:
    pe, npe, ppe, nppe = pipe.encode_prompt(
        [SOURCE, TARGET], None, None, device=torch.device("cpu"), do_classifier_free_guidance=True
    )
    cond, null = sd3.encode_prompt([SOURCE, TARGET]), sd3.null_condition()
    assert cond.embeds.shape == (2, 77 + 256, 96) and cond.pooled.shape == (2, 64)
    assert torch.equal(cond.embeds, pe) and torch.equal(cond.pooled, ppe)
    _, npe1, _, nppe1 = pipe.encode_prompt(SOURCE, None, None, device=torch.device("cpu"))  # "" alone
    assert torch.equal(null.embeds, npe1) and torch.equal(null.pooled, nppe1)
    torch.testing.assert_close(null.pooled.expand(2, -1), nppe, rtol=1e-5, atol=1e-6)
    assert torch.equal(cond.embeds[:, 77:], torch.zeros_like(cond.embeds[:, 77:]))  # no T5: zeros


def test_euler_regeneration_equals_the_pipeline(sd3, pipe) -> None:
    """From the same x_T, 5 Euler steps at guidance 4.5: the framework's reverse loop (η = 0)
    and the pipeline with its FlowMatchEulerDiscreteScheduler, output_type="latent"."""
    x_t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    theirs = pipe(
        prompt=SOURCE, latents=x_t.clone(), num_inference_steps=5, guidance_scale=4.5, height=32, width=32,
        output_type="latent",
    ).images
    schedule = sd3.schedule(5, 0.0)
    mine = reverse_process(sd3, x_t, schedule, 5, sd3.encode_prompt([SOURCE]), sd3.null_condition(), 4.5)
    torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-5)
    assert float((mine - x_t).abs().max()) > 0.1  # the steps did move the latent


def test_edit_friendly_and_cycle_diffusion_reconstruct_exactly(sd3, x0) -> None:
    text = EDITORS.build({"name": "text", "guidance_scale": 3.5})  # the inversions' guidance
    for name in ("ddpm_edit_friendly", "cycle_diffusion"):
        inv = _invert(sd3, x0, name)
        assert inv.nfe == 6 and inv.timesteps.dtype == torch.float32
        out = text.edit(sd3, inv, SOURCE, [SOURCE], skip=0)
        assert float((out - x0).abs().max()) <= 1e-5, name
        target = text.edit(sd3, inv, SOURCE, [TARGET], skip=0)
        assert float((target - x0).abs().max()) > 1e-2
    # several timesteps per pass (per-row float timesteps) give the same maps
    batched = _invert(sd3, x0, timestep_batch=3)
    torch.testing.assert_close(batched.zs, _invert(sd3, x0).zs, rtol=1e-4, atol=1e-4)
    # DDIM inversion: the Euler step backwards, the velocity evaluated at x_{i-1} with step i's time
    ddim = _invert(sd3, x0, "ddim")
    assert ddim.zs is None and ddim.nfe == 6
    schedule = sd3.schedule(6, 0.0)
    cond = sd3.encode_prompt([SOURCE])
    for i in (1, 4):
        v = sd3.predict_noise(ddim.xts[i - 1], schedule.timestep(i), cond)
        t, s = schedule.times(i)
        torch.testing.assert_close(ddim.xts[i], ddim.xts[i - 1] + (t - s) * v, rtol=1e-5, atol=1e-5)
    # EDICT's coupled Euler steps invert exactly as well
    edict = EDITORS.build({"name": "text", "guidance_scale": 3.0})
    out = edict.edit(sd3, _invert(sd3, x0, "edict", steps=4), SOURCE, [SOURCE], skip=0)
    assert float((out - x0).abs().max()) <= 1e-5


def _reference_flowedit(sd3, pipe, x_src, n_steps, n_max, g_src, g_tar, generator):
    """FlowEditSD3 of the authors' code (n_min = 0), written out with the pipeline's parts."""
    sch = FlowMatchEulerDiscreteScheduler.from_config(sd3.scheduler.config)
    sch.set_timesteps(n_steps)
    timesteps = sch.timesteps
    pe, npe, ppe, nppe = pipe.encode_prompt(SOURCE, None, None, device="cpu", do_classifier_free_guidance=True)
    te, nte, tpe, ntpe = pipe.encode_prompt(TARGET, None, None, device="cpu", do_classifier_free_guidance=True)
    embeds, pooled = torch.cat([npe, pe, nte, te]), torch.cat([nppe, ppe, ntpe, tpe])
    z_edit = x_src.clone()
    for i, t in enumerate(timesteps):
        if n_steps - i > n_max:
            continue
        t_i = t / 1000
        t_im1 = timesteps[i + 1] / 1000 if i + 1 < len(timesteps) else torch.zeros_like(t_i)
        noise = torch.randn(x_src.shape, generator=generator)
        z_src = (1 - t_i) * x_src + t_i * noise
        z_tar = z_edit + z_src - x_src
        out = pipe.transformer(
            hidden_states=torch.cat([z_src, z_src, z_tar, z_tar]), timestep=t.expand(4),
            encoder_hidden_states=embeds, pooled_projections=pooled, return_dict=False,
        )[0]
        su, sc, tu, tc = out.chunk(4)
        v_delta = (tu + g_tar * (tc - tu)) - (su + g_src * (sc - su))
        z_edit = z_edit + (t_im1 - t_i) * v_delta
    return z_edit


def test_flowedit_equals_the_reference_algorithm(sd3, pipe, x0) -> None:
    inv = _invert(sd3, x0, "none", steps=8)
    assert inv.nfe == 0 and inv.encoded_only
    editor = EDITORS.build({"name": "flowedit", "n_max": 5, "source_guidance_scale": 3.5, "guidance_scale": 13.5})
    nfe = sd3.nfe
    mine = editor.edit(sd3, inv, SOURCE, [TARGET], skip=0, generator=torch.Generator().manual_seed(5))
    assert sd3.nfe - nfe == 5  # one pass (source and target, both guided) per edited step
    theirs = _reference_flowedit(sd3, pipe, x0, 8, 5, 3.5, 13.5, torch.Generator().manual_seed(5))
    torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-5)
    assert float((mine - x0).abs().max()) > 1e-2
    # identical source and target prompts (and guidance): the input comes back unchanged
    same = EDITORS.build({"name": "flowedit", "n_max": 5, "source_guidance_scale": 7.0, "guidance_scale": 7.0})
    out = same.edit(sd3, inv, SOURCE, [SOURCE, SOURCE], skip=0, generator=torch.Generator().manual_seed(5))
    assert float((out - x0).abs().max()) <= 1e-5
    # n_min > 0: the last steps sample the target plainly (n_avg draws per FlowEdit step)
    mixed = EDITORS.build({"name": "flowedit", "n_max": 5, "n_min": 2, "n_avg": 2})
    nfe = sd3.nfe
    out = mixed.edit(sd3, inv, SOURCE, [TARGET], skip=0, generator=torch.Generator().manual_seed(5))
    assert sd3.nfe - nfe == 3 * 2 + 2 and torch.isfinite(out).all()


def test_sdedit_with_none_is_identical_and_costs_no_inversion(sd3, x0) -> None:
    from framework.edit import invert_latent

    sdedit = EDITORS.build({"name": "sdedit", "strength": 0.5})
    outs, nfes = [], []
    for name in ("ddpm_edit_friendly", "none"):
        run = invert_latent(sd3, INVERTERS.build({"name": name}), x0, SOURCE, num_steps=6, skip=0, seed=0)
        nfes.append(run.nfe)
        gen = torch.Generator().manual_seed(2)
        outs.append(sdedit.edit(sd3, run.inversion, SOURCE, [TARGET], skip=0, generator=gen))
    assert torch.equal(outs[0], outs[1]) and nfes == [6, 0]


def test_prompt_free_editors_run_on_sd3(sd3, x0) -> None:
    inv = _invert(sd3, x0)
    shift = EDITORS.build({"name": "shift", "dx": 2, "dy": 0})
    assert shift.edit(sd3, inv, SOURCE, [SOURCE], skip=0).shape == x0.shape
    cls, options = EDITORS.options({"name": "color_strokes", "strength": 0.0, "start_step": 1, "end_step": 6})
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 4:16] = 1
    colors = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 32, 32).clone()
    out = cls(options, mask=mask, colors=colors).edit(sd3, inv, SOURCE, [SOURCE], skip=0)
    assert float((out - x0).abs().max()) <= 1e-5  # strength 0: the maps, hence x0, unchanged


def test_refusals(sd3, x0) -> None:
    inv = _invert(sd3, x0)
    for name in ("prompt_to_prompt", "plug_and_play", "zero_shot"):
        with pytest.raises(InputError, match="SD3Backbone"):
            EDITORS.build({"name": name}).edit(sd3, inv, SOURCE, [TARGET], skip=0)
    none = _invert(sd3, x0, "none")
    for name in ("text", "shift"):
        with pytest.raises(InputError, match="only\\s+encodes the image"):
            EDITORS.build({"name": name}).edit(sd3, none, SOURCE, [TARGET], skip=0)
    from framework.edit import check_inversion_needed

    with pytest.raises(InputError, match="the text editor needs"):
        check_inversion_needed(INVERTERS.build({"name": "none"}), EDITORS.build({"name": "text"}))
    check_inversion_needed(INVERTERS.build({"name": "none"}), EDITORS.build({"name": "flowedit"}))


def test_flowedit_refuses_a_ddpm_backbone(tiny, photo_x0) -> None:
    inv = INVERTERS.build({"name": "none"}).invert(tiny, photo_x0, SOURCE, num_steps=4, skip=0)
    with pytest.raises(InputError, match="flow-matching"):
        EDITORS.build({"name": "flowedit", "n_max": 3}).edit(tiny, inv, SOURCE, [TARGET], skip=0)


def test_sdedit_and_flowedit_presets_use_none_unless_an_inverter_is_named() -> None:
    from framework.config import compose

    assert compose(overrides=["editor=sdedit"], kind="edit").inverter.name == "none"
    cfg = compose(overrides=["editor=flowedit"], kind="edit")
    assert cfg.inverter.name == "none" and (cfg.num_steps, cfg.skip, cfg.editor.n_max) == (50, 0, 33)
    assert "inverter" not in cfg.editor  # the preset's key is not an option
    assert compose(overrides=["editor=sdedit", "inverter=ddim"], kind="edit").inverter.name == "ddim"
    assert compose(overrides=["editor=text"], kind="edit").inverter.name == "ddpm_edit_friendly"
