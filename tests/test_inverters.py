"""DDIM and CycleDiffusion inversion beside edit-friendly DDPM inversion.

1. DDIM inversion equals diffusers' DDIMInverseScheduler and its reconstruction error shrinks
   with the number of steps (a table is printed).
2. CycleDiffusion and edit-friendly reconstruct exactly at 100 steps, skip 0 and 36.
3. Every inverter works with every backbone (tiny, tiny_v, gaussian) and the text editor.
"""

from __future__ import annotations

import pytest
import torch

from framework.backbone import load_backbone
from framework.errors import InputError
from framework.random import make_generator
from framework.registry import EDITORS, INVERTERS
from framework.sampling import reverse_process
from plugins.inverters.cycle_diffusion import posterior_chain
from plugins.inverters.ddpm_edit_friendly import auxiliary_sequence

PROMPT = "a photo of a cat sitting on grass"
TARGET = "a painting of a dog sitting on grass"
INVERTER_NAMES = ("ddpm_edit_friendly", "cycle_diffusion", "ddim")


@pytest.fixture(scope="module")
def gaussian():
    return load_backbone("gaussian", device="cpu")


def backbone_by_name(request: pytest.FixtureRequest, name: str):
    return request.getfixturevalue(name)


# ------------------------------------------------------------------ 1. DDIM inversion
@pytest.mark.parametrize(
    ("backbone_name", "guidance"), [("tiny", 1.0), ("tiny", 3.0), ("tiny_v", 1.0)]
)
def test_ddim_matches_diffusers_inverse_scheduler(request, backbone_name, guidance, photo_x0):
    """Same timesteps, same ᾱ convention, same latent after every step as DDIMInverseScheduler.

    For the v-prediction model the scheduler is fed the backbone's ε (diffusers would convert v
    with the ᾱ of the input's level, the framework with the ᾱ of the timestep the network sees;
    the two agree for ε-models, which is what this checks for tiny).
    """
    from diffusers import DDIMInverseScheduler

    bb = backbone_by_name(request, backbone_name)
    N = 10
    inv = INVERTERS.build({"name": "ddim", "guidance_scale": guidance}).invert(bb, photo_x0, PROMPT, num_steps=N)
    assert inv.zs is None and inv.eta == 0.0 and inv.xts.shape == (N + 1, *photo_x0.shape)
    assert inv.nfe == N

    sched = DDIMInverseScheduler.from_config(bb.scheduler.config, prediction_type="epsilon")
    sched.set_timesteps(N)
    assert sched.timesteps.tolist() == inv.timesteps.tolist()
    assert float(sched.initial_alpha_cumprod) == pytest.approx(bb.final_alpha_cumprod)
    cond = bb.encode_prompt([PROMPT]).embeds  # the UNet is called directly below
    uncond = bb.encode_prompt([""]).embeds
    x = photo_x0.clone()
    with torch.no_grad():
        for k, t in enumerate(sched.timesteps):
            if guidance == 1.0:
                out = bb.unet(x, t, encoder_hidden_states=cond).sample
            else:
                out_u, out_c = bb.unet(
                    torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])
                ).sample.chunk(2)
                out = out_u + guidance * (out_c - out_u)
            if bb.prediction_type != "epsilon":
                out = bb.to_epsilon(out, x, int(t))
            x = sched.step(out, t, x).prev_sample
            assert torch.allclose(inv.xts[k + 1], x, atol=1e-5, rtol=1e-5), f"step {k + 1}"


def test_ddim_reconstruction_error_shrinks_with_steps(tiny, photo_x0):
    """Invert then regenerate with the text editor (source prompt, η = 0): error at 10/50/100 steps."""
    inverter = INVERTERS.build({"name": "ddim"})
    editor = EDITORS.build({"name": "text", "guidance_scale": 1.0})
    rows = []
    for n in (10, 50, 100):
        inv = inverter.invert(tiny, photo_x0, PROMPT, num_steps=n)
        rec = editor.edit(tiny, inv, PROMPT, [PROMPT], skip=0)
        err = rec - photo_x0
        rows.append((n, float(err.abs().max()), float(err.pow(2).mean()), float(err.abs().mean())))
    # the table shows with the test's report (pytest -rP, or when it fails)
    print("DDIM inversion + DDIM sampling on the tiny backbone (reconstruction of x0):")
    print(f"{'steps':>6} {'max abs':>10} {'MSE':>12} {'mean abs':>10}")
    for n, mx, mse, mae in rows:
        print(f"{n:>6} {mx:>10.4f} {mse:>12.6f} {mae:>10.4f}")
    mses = [r[2] for r in rows]
    maes = [r[3] for r in rows]
    assert mses[0] > mses[1] > mses[2], rows
    assert maes[0] > maes[1] > maes[2], rows
    assert mses[2] < 0.5 * mses[0]


def test_ddim_stopped_at_an_intermediate_step(tiny, photo_x0):
    """skip=k inverts only steps 1..N-k: a prefix of the full inversion; the edit starts there."""
    N, k = 20, 8
    inverter = INVERTERS.build({"name": "ddim"})
    full = inverter.invert(tiny, photo_x0, PROMPT, num_steps=N)
    nfe = tiny.nfe
    part = inverter.invert(tiny, photo_x0, PROMPT, num_steps=N, skip=k)
    assert tiny.nfe - nfe == N - k == part.nfe
    assert part.start_step == N - k and part.xts.shape[0] == N - k + 1
    assert torch.allclose(part.xts, full.xts[: N - k + 1], atol=1e-5)
    editor = EDITORS.build({"name": "text", "guidance_scale": 1.0})
    out = editor.edit(tiny, part, PROMPT, [PROMPT], skip=k)
    manual = reverse_process(tiny, part.xts[-1], tiny.schedule(N, 0.0), N - k, tiny.encode_prompt([PROMPT]), None, 1.0)
    assert torch.allclose(out, manual, atol=1e-5)
    with pytest.raises(InputError, match="skip"):
        editor.edit(tiny, part, PROMPT, [PROMPT], skip=k - 1)  # steps above N-k were never inverted


# ------------------------------------------------------------------ 2. exact reconstruction
@pytest.mark.parametrize("name", ["cycle_diffusion", "ddpm_edit_friendly"])
@pytest.mark.parametrize("skip", [0, 36])
def test_stochastic_inversions_reconstruct_exactly(tiny, photo_x0, name, skip):
    """100 steps, source guidance 3.5: the text editor with the source prompt gives back x0."""
    inv = INVERTERS.build({"name": name}).invert(
        tiny, photo_x0, PROMPT, num_steps=100, skip=skip, generator=make_generator(0)
    )
    assert inv.zs.shape == (100 - skip, *photo_x0.shape) and inv.xts.shape[0] == 101 - skip
    editor = EDITORS.build({"name": "text", "guidance_scale": inv.guidance_scale})
    rec = editor.edit(tiny, inv, PROMPT, [PROMPT], skip=skip)
    err = float((rec - photo_x0).abs().max())
    print(f"{name} skip={skip}: max abs reconstruction error {err:.2e}")
    assert err <= 1e-4


def test_cycle_diffusion_own_eta_reconstructs_exactly(tiny, photo_x0):
    """CycleDiffusion's own η = 0.1 (small σ, large z) is still exact."""
    inv = INVERTERS.build({"name": "cycle_diffusion", "eta": 0.1}).invert(
        tiny, photo_x0, PROMPT, num_steps=20, skip=5, generator=make_generator(0)
    )
    assert inv.eta == 0.1
    rec = EDITORS.build({"name": "text", "guidance_scale": 3.5}).edit(tiny, inv, PROMPT, [PROMPT], skip=5)
    assert float((rec - photo_x0).abs().max()) <= 1e-4


def test_cycle_diffusion_chain_is_the_forward_process(tiny):
    """The posterior chain keeps the forward marginals q(x_i|x0) and couples consecutive steps
    (ε_i and ε_{i-1} strongly correlated), unlike edit-friendly's independent ε̃ (eq. 6)."""
    x0 = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)).expand(256, 4, 16, 16)
    schedule = tiny.schedule(50, 1.0)
    gen = make_generator(1)
    chain = posterior_chain(x0, schedule, 50, gen)
    aux = auxiliary_sequence(x0, schedule, 50, gen)
    assert torch.equal(chain[0], x0)

    def eps(xts, i):
        a, b = schedule.noise_level(i)
        return ((xts[i] - a * x0) / b).flatten()

    for i in (2, 10, 25, 50):
        e = eps(chain, i)
        assert abs(float(e.mean())) < 0.02 and abs(float(e.var()) - 1) < 0.03, i
    corr_chain = torch.corrcoef(torch.stack([eps(chain, 30), eps(chain, 29)]))[0, 1]
    corr_aux = torch.corrcoef(torch.stack([eps(aux, 30), eps(aux, 29)]))[0, 1]
    assert corr_chain > 0.9 and abs(corr_aux) < 0.02


def test_inverter_option_errors(tiny, photo_x0):
    for name in ("cycle_diffusion", "ddpm_edit_friendly"):
        with pytest.raises(InputError, match="eta"):
            INVERTERS.build({"name": name, "eta": 0.0}).invert(tiny, photo_x0, PROMPT, num_steps=5)
    for name in INVERTER_NAMES:
        with pytest.raises(InputError, match="skip"):
            INVERTERS.build({"name": name}).invert(tiny, photo_x0, PROMPT, num_steps=5, skip=5)


# ------------------------------------------------------------------ 3. the matrix
@pytest.mark.parametrize("backbone_name", ["tiny", "tiny_v"])
@pytest.mark.parametrize("inverter_name", INVERTER_NAMES)
def test_matrix_conditional_backbones_with_text_editor(request, backbone_name, inverter_name, photo_x0):
    bb = backbone_by_name(request, backbone_name)
    N, skip = 12, 4
    inv = INVERTERS.build({"name": inverter_name}).invert(
        bb, photo_x0, PROMPT, num_steps=N, skip=skip, generator=make_generator(0)
    )
    assert inv.method == inverter_name and inv.xts.shape == (N - skip + 1, *photo_x0.shape)
    assert (inv.zs is None) == (inverter_name == "ddim")
    # reconstruction with the source prompt at the inversion's guidance
    same = EDITORS.build({"name": "text", "guidance_scale": inv.guidance_scale}).edit(
        bb, inv, PROMPT, [PROMPT], skip=skip
    )
    err = float((same - photo_x0).abs().max())
    if inverter_name == "ddim":  # approximate (see the DDIM table); the editor samples with σ = 0
        schedule = bb.schedule(N, 0.0)
        assert float(schedule.sigma.abs().max()) == 0.0
        manual = reverse_process(bb, inv.xts[-1], schedule, N - skip, bb.encode_prompt([PROMPT]), None, 1.0)
        assert torch.allclose(same, manual, atol=1e-5) and torch.isfinite(same).all()
    else:
        assert err <= 1e-4
    # an edit: two targets in one batch, reproducible, and different from the reconstruction
    editor = EDITORS.build({"name": "text"})
    out = editor.edit(bb, inv, PROMPT, [TARGET, PROMPT], skip=skip, generator=make_generator(1))
    again = editor.edit(bb, inv, PROMPT, [TARGET, PROMPT], skip=skip, generator=make_generator(2))
    assert out.shape == (2, *photo_x0.shape[1:]) and torch.isfinite(out).all()
    assert torch.allclose(out, again, atol=1e-5)  # noise maps fixed (or η = 0): no fresh noise
    assert float((out[0] - out[1]).abs().max()) > 1e-3
    images = bb.decode(out)
    assert images.shape == (2, 3, bb.resolution, bb.resolution)


@pytest.mark.parametrize("inverter_name", INVERTER_NAMES)
def test_matrix_gaussian_backbone(gaussian, inverter_name):
    """The unconditional Gaussian model: the inverters run (prompts and guidance are ignored),
    the generic reverse process regenerates x0, and the prompt-driven text editor refuses it."""
    N, skip = 40, 10
    x0 = gaussian.sample_data(3, make_generator(0))
    inv = INVERTERS.build({"name": inverter_name}).invert(
        gaussian, x0, "ignored", num_steps=N, skip=skip, generator=make_generator(1)
    )
    assert inv.xts.shape == (N - skip + 1, 3, 2, 1, 1)
    assert inv.nfe == N - skip  # no doubled CFG pass on an unconditional model
    rec = reverse_process(gaussian, inv.xts[-1], gaussian.schedule(N, inv.eta), N - skip, None, None, 1.0, zs=inv.zs)
    err = float((rec - x0).abs().max())
    if inverter_name == "ddim":
        ddim100 = INVERTERS.build({"name": "ddim"}).invert(gaussian, x0, "", num_steps=4 * N, skip=4 * skip)
        rec100 = reverse_process(
            gaussian, ddim100.xts[-1], gaussian.schedule(4 * N, 0.0), 4 * (N - skip), None, None, 1.0
        )
        assert float((rec100 - x0).abs().max()) < err < 2.0
    else:
        assert err <= 1e-4
    with pytest.raises(InputError, match="unconditional"):
        EDITORS.build({"name": "text"}).edit(gaussian, _one(inv), "", ["x"], skip=skip)


def _one(inv):
    """The inversion of the first row only (editors take one image)."""
    import dataclasses

    return dataclasses.replace(inv, xts=inv.xts[:, :1], zs=None if inv.zs is None else inv.zs[:, :1])
