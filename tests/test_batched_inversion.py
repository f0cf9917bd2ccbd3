"""Edit-friendly inversion with several timesteps per network pass (``timestep_batch``).

Eq. 6 draws every x_i independently, so the batched extraction must give the sequential
loop's noise maps (to float tolerance: the network sees rounding-different inputs), reproduce
x0 through the reverse pass, and make exactly ceil(n / batch) network calls.
"""

from __future__ import annotations

import math

import pytest
import torch

from framework.batched_inversion import (
    _MeasuredSizes,
    auto_choice,
    auto_measurements,
    evaluate_steps,
    extract_noise_maps_batched,
)
from framework.errors import ConfigError
from framework.registry import EDITORS, INVERTERS
from plugins.inverters.ddpm_edit_friendly import auxiliary_sequence, extract_noise_maps

STEPS, SKIP = 20, 4  # n = 16 computed steps
N = STEPS - SKIP
KEY = ("cpu", "torch.float32", (1, 4, 16, 16), True)  # auto's cache key for one tiny image with guidance


def invert(backbone, x0, batch, prompt="a photo of a cat", steps=STEPS, skip=SKIP, seed=0):
    inverter = INVERTERS.build({"name": "ddpm_edit_friendly", "timestep_batch": batch})
    return inverter.invert(backbone, x0, prompt, num_steps=steps, skip=skip,
                           generator=torch.Generator().manual_seed(seed))


class CallCounter:
    """Counts forward passes of a module with a forward hook."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        self.rows: list[int] = []
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.calls += 1
        self.rows.append(int(args[0].shape[0]))

    def __enter__(self) -> CallCounter:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


@pytest.fixture(scope="module")
def sequential(tiny, photo_x0):
    return invert(tiny, photo_x0, 1)


@pytest.mark.parametrize("batch", [3, 7, 16])
def test_batched_maps_equal_sequential_and_reconstruct(tiny, photo_x0, sequential, batch) -> None:
    """3 and 7 do not divide n = 16; 16 is the whole inversion in one pass; skip = 4 > 0."""
    with CallCounter(tiny.unet) as counter:
        inv = invert(tiny, photo_x0, batch)
    assert counter.calls == math.ceil(N / batch) == inv.nfe
    # every pass has 2 rows (guidance) per step: full chunks, then the remainder
    sizes = [min(batch, N - k * batch) for k in range(math.ceil(N / batch))]
    assert counter.rows == [2 * s for s in sizes]
    assert inv.zs.dtype == torch.float32 and inv.zs.shape == sequential.zs.shape
    torch.testing.assert_close(inv.zs, sequential.zs, atol=1e-4, rtol=0)
    torch.testing.assert_close(inv.xts, sequential.xts, atol=1e-5, rtol=0)
    assert torch.equal(inv.xts[0], photo_x0) and torch.equal(inv.xts[N], sequential.xts[N])
    # the reverse pass (eq. 3) with the source prompt and the same guidance reproduces x0
    out = EDITORS.build({"name": "text", "guidance_scale": 3.5}).edit(
        tiny, inv, "a photo of a cat", ["a photo of a cat"], skip=SKIP
    )
    assert (out - photo_x0).abs().max().item() <= 1e-4


def test_cycle_diffusion_batched_equals_its_sequential_maps(tiny, photo_x0) -> None:
    """CycleDiffusion's chain is drawn without the model, so its extraction batches too."""

    def cycle(batch):
        inverter = INVERTERS.build({"name": "cycle_diffusion", "timestep_batch": batch})
        return inverter.invert(tiny, photo_x0, "a photo of a cat", num_steps=STEPS, skip=SKIP,
                               generator=torch.Generator().manual_seed(3))

    seq = cycle(1)
    with CallCounter(tiny.unet) as counter:
        bat = cycle(5)
    assert counter.calls == math.ceil(N / 5) == bat.nfe and seq.nfe == N
    assert torch.equal(bat.xts[N], seq.xts[N])  # the same chain (same generator draws)
    torch.testing.assert_close(bat.zs, seq.zs, atol=1e-4, rtol=0)
    out = EDITORS.build({"name": "text", "guidance_scale": 3.5}).edit(
        tiny, bat, "a photo of a cat", ["a photo of a cat"], skip=SKIP
    )
    assert (out - photo_x0).abs().max().item() <= 1e-4


def test_batch_one_through_the_batched_code_is_the_sequential_loop(tiny, photo_x0) -> None:
    schedule = tiny.schedule(STEPS, 1.0)
    cond, uncond = tiny.encode_prompt(["a cat"]), tiny.null_condition()
    xts = auxiliary_sequence(photo_x0, schedule, N, torch.Generator().manual_seed(1))
    xts_seq, xts_bat = xts.clone(), xts.clone()
    with torch.no_grad():
        zs_seq = extract_noise_maps(tiny, xts_seq, schedule, cond, uncond, 3.5)
        zs_bat = extract_noise_maps_batched(tiny, xts_bat, schedule, cond, uncond, 3.5, 1)
    assert torch.equal(zs_seq, zs_bat) and torch.equal(xts_seq, xts_bat)


def test_rows_of_several_images_keep_their_own_prompt_and_timestep(tiny, photo_x0) -> None:
    """Two images with different prompts: row s·B + k must be image k at step s."""
    x0 = torch.cat([photo_x0, photo_x0.flip(-1)])
    prompts = ["a photo of a cat", "a red car"]
    seq = invert(tiny, x0, 1, prompt=prompts)
    bat = invert(tiny, x0, 5, prompt=prompts)
    torch.testing.assert_close(bat.zs, seq.zs, atol=1e-4, rtol=0)
    # one pass of 3 steps x 2 images equals the per-step, per-image evaluations
    schedule = tiny.schedule(STEPS, 1.0)
    cond, uncond = tiny.encode_prompt(prompts), tiny.null_condition()
    with torch.no_grad():
        eps = evaluate_steps(tiny, seq.xts, [9, 5, 2], schedule, cond, uncond, 3.5)
        for s, i in enumerate([9, 5, 2]):
            t = int(schedule.timesteps[i - 1])
            for k in range(2):
                one = tiny.predict_noise(seq.xts[i, k : k + 1], t, cond.rows(k), uncond, 3.5)
                torch.testing.assert_close(eps[s, k : k + 1], one, atol=1e-5, rtol=1e-5)


def test_auto_measures_then_reuses_its_choice(photo_x0) -> None:
    from framework.backbone import load_backbone

    backbone = load_backbone("tiny", device="cpu")  # own instance: auto caches per backbone
    seq = invert(backbone, photo_x0, 1, steps=40, skip=0)
    runs = []
    while not runs or auto_choice(backbone) == {KEY: "measuring"}:  # 40 steps may not finish it
        runs.append(invert(backbone, photo_x0, "auto", steps=40, skip=0))
        assert len(runs) <= 4  # 2 x (1+2+4+8+16+32) steps at most are measured
    chosen = auto_choice(backbone)[KEY]
    measured = auto_measurements(backbone)[KEY]  # {steps per pass: seconds per step}
    assert 1 <= chosen <= 32 and chosen in measured and min(measured.values()) > 0
    assert measured[chosen] == min(measured.values())
    runs.append(invert(backbone, photo_x0, "auto", steps=40, skip=0))
    assert runs[-1].nfe == math.ceil(40 / chosen)  # the cached choice, no new measurement
    for inv in runs:
        torch.testing.assert_close(inv.zs, seq.zs, atol=1e-4, rtol=0)


def test_auto_decision_rule() -> None:
    """Each size runs twice (the second is timed); doubling goes on while it gains >= 5% per
    step; two misses in a row stop it; the fastest timed size wins."""

    def drive(sizes, per_step, first=1000.0):
        seen = []
        while sizes.chosen is None:
            size = next(sizes)
            cold = size not in sizes.warm
            seen.append(size)
            sizes.feedback(size, (first if cold else per_step[size]) * size)  # cold runs: slow
        return seen

    cache: dict = {}
    sizes = _MeasuredSizes(cache, "k", 64)
    seen = drive(sizes, {1: 10.0, 2: 6.0, 4: 5.8, 8: 4.0, 16: 3.9, 32: 3.8})  # 4 is a noisy miss
    assert seen == [1, 1, 2, 2, 4, 4, 8, 8, 16, 16, 32, 32] and sizes.chosen == 32 and cache == {"k": 32}
    sizes = _MeasuredSizes({}, "k", 64)
    assert drive(sizes, {1: 10.0, 2: 5.0, 4: 4.9, 8: 5.1}) == [1, 1, 2, 2, 4, 4, 8, 8]
    assert sizes.chosen == 4 and next(sizes) == 4
    sizes.feedback(3, 1.0)  # after the choice, feedback changes nothing
    assert sizes.chosen == 4
    sizes = _MeasuredSizes({}, "k", 3)  # 3-step inversions: 1 and 2 are timed, 4 never fits
    for size, ran, seconds in ((1, 1, 9.0), (1, 1, 3.0), (2, 2, 9.0), (2, 2, 4.0), (4, 3, 1.0)):
        assert next(sizes) == size
        sizes.feedback(ran, seconds)
    assert sizes.chosen == 2  # the fastest timed size (2 s/step); the cut-short 3 is not timed


@pytest.mark.parametrize("bad", [0, -2, "fast", 2.5, True])
def test_bad_timestep_batch_is_a_config_error(bad) -> None:
    with pytest.raises(ConfigError, match="timestep_batch"):
        INVERTERS.build({"name": "ddpm_edit_friendly", "timestep_batch": bad})


def test_gaussian_per_row_timesteps_match_the_closed_form() -> None:
    from framework.backbone import load_backbone

    g = load_backbone({"name": "gaussian", "mean": [1.0, -2.0], "cov": [[2.0, 0.5], [0.5, 1.0]]}, device="cpu")
    x = torch.randn(3, 2, 1, 1, generator=torch.Generator().manual_seed(0))
    ts = torch.tensor([10, 400, 900])
    rows = g.predict_noise(x, ts, None)
    for k in range(3):
        torch.testing.assert_close(rows[k : k + 1], g.optimal_epsilon(x[k : k + 1], int(ts[k])))


def test_auto_on_cuda_fits_the_free_memory(monkeypatch) -> None:
    """The CUDA rule with the allocator's figures faked: 1st step alone, then 80% of free / step."""
    from framework import batched_inversion as bi

    gib = 2**30
    mem = {"allocated": 1 * gib, "peak": 1 * gib, "free": 10 * gib, "reserved": 1 * gib}
    cuda = torch.cuda
    monkeypatch.setattr(cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(cuda, "reset_peak_memory_stats", lambda device=None: None)
    monkeypatch.setattr(cuda, "memory_allocated", lambda device=None: mem["allocated"])
    monkeypatch.setattr(cuda, "max_memory_allocated", lambda device=None: mem["peak"])
    monkeypatch.setattr(cuda, "memory_reserved", lambda device=None: mem["reserved"])
    monkeypatch.setattr(cuda, "mem_get_info", lambda device=None: (mem["free"], 80 * gib))
    cache: dict = {}
    sizes = bi._CudaMemorySizes(cache, "k", 64, torch.device("cuda"))
    assert next(sizes) == 1  # the first step runs alone, measured
    mem["peak"] = int(1.5 * gib)  # that step needed 0.5 GiB more
    sizes.feedback(1, 0.1)
    assert next(sizes) == 16 and cache["k"] == {"bytes_per_step": gib // 2, "steps_per_pass": 16}
    mem["free"] = 4 * gib  # a later inversion: the cached per-step memory, today's free memory
    assert next(bi._CudaMemorySizes(cache, "k", 64, torch.device("cuda"))) == 6
    assert next(bi._CudaMemorySizes(cache, "k", 3, torch.device("cuda"))) == 3  # at most n
