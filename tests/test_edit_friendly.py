"""Edit-friendly DDPM inversion and text editing on the tiny model (CPU, float32).

The paper's properties: exact reconstruction (Algorithm 1's last line), noise maps with
variance above 1 and negative correlation between consecutive steps (section 3.2), diversity
through the generator, and network evaluations only for the steps an edit uses.
"""

from __future__ import annotations

import pytest
import torch

from framework.errors import InputError
from framework.registry import EDITORS, INVERTERS

SOURCE = "a photo of a flower"


def _invert(backbone, x0, *, skip=0, seed=0, steps=100, **opts):
    inverter = INVERTERS.build({"name": "ddpm_edit_friendly", **opts})
    return inverter.invert(
        backbone, x0, SOURCE, num_steps=steps, skip=skip, generator=torch.Generator().manual_seed(seed)
    )


@pytest.mark.parametrize("model", ["tiny", "tiny_v"])
def test_exact_reconstruction(model, request, photo_path) -> None:
    from framework.images import load_image_tensor

    backbone = request.getfixturevalue(model)
    x0 = backbone.encode_image(load_image_tensor(photo_path, backbone.resolution, backbone.size_multiple))
    editor = EDITORS.build({"name": "text", "guidance_scale": 3.5})  # same CFG as the inversion
    inv = _invert(backbone, x0)
    assert inv.xts.shape == (101, 1, 4, 16, 16) and inv.zs.shape == (100, 1, 4, 16, 16)
    out = editor.edit(backbone, inv, SOURCE, [SOURCE], skip=0)
    err0 = (out - x0).abs().max().item()
    assert err0 <= 1e-4, err0

    inv36 = _invert(backbone, x0, skip=36)
    assert inv36.xts.shape[0] == 65 and inv36.zs.shape[0] == 64
    out36 = editor.edit(backbone, inv36, SOURCE, [SOURCE], skip=36)
    err36 = (out36 - inv36.xts[0]).abs().max().item()
    assert err36 <= 1e-4, err36
    print(f"\n{model}: reconstruction max abs error skip 0: {err0:.2e}, skip 36: {err36:.2e}")


def _consecutive_correlation(zs: torch.Tensor) -> torch.Tensor:
    """Pearson correlation between z_i and z_{i-1} for every i, over all entries."""
    z = zs.flatten(1)
    z = z - z.mean(1, keepdim=True)
    z = z / z.norm(dim=1, keepdim=True)
    return (z[1:] * z[:-1]).sum(1)


def test_noise_map_statistics(tiny, photo_x0) -> None:
    inv = _invert(tiny, photo_x0)
    variance = inv.zs.flatten(1).var(1)
    corr = _consecutive_correlation(inv.zs)
    print(f"\nz variance: mean {variance.mean():.2f}, min {variance.min():.2f}; "
          f"consecutive correlation mean {corr.mean():.3f}")
    assert variance.min() > 1.0  # every step's map has variance above that of N(0, I)
    assert corr.mean() < -0.1  # consecutive maps are negatively correlated

    ref = _invert(tiny, photo_x0, zero_last_noise=True)
    assert torch.count_nonzero(ref.zs[0]) == 0  # the reference code's z_1 = 0
    torch.testing.assert_close(ref.zs[1:], inv.zs[1:])  # the other maps are unchanged
    editor = EDITORS.build({"name": "text", "guidance_scale": 3.5})
    exact = editor.edit(tiny, inv, SOURCE, [SOURCE], skip=0)
    zeroed = editor.edit(tiny, ref, SOURCE, [SOURCE], skip=0)
    sigma1 = float(tiny.schedule(100, 1.0).sigma[0])
    # without z_1 the reconstruction misses exactly the last noise term σ_1 z_1
    torch.testing.assert_close(exact - zeroed, sigma1 * inv.zs[0], atol=1e-5, rtol=1e-4)
    assert (zeroed - photo_x0).abs().max() > 1e-3


def test_generators_give_diversity_and_determinism(tiny, photo_x0) -> None:
    editor = EDITORS.build({"name": "text"})
    a = _invert(tiny, photo_x0, skip=10, steps=20, seed=1)
    b = _invert(tiny, photo_x0, skip=10, steps=20, seed=1)
    c = _invert(tiny, photo_x0, skip=10, steps=20, seed=2)
    assert torch.equal(a.zs, b.zs) and torch.equal(a.xts, b.xts)
    assert not torch.allclose(a.zs, c.zs)
    target = ["a painting of a cat"]
    ea, eb, ec = (editor.edit(tiny, inv, SOURCE, target, skip=10) for inv in (a, b, c))
    assert torch.equal(ea, eb)
    assert (ea - ec).abs().max() > 1e-3


def test_network_evaluations_counted_and_batched(tiny, photo_x0) -> None:
    calls: list[int] = []
    handle = tiny.unet.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        n0 = tiny.nfe
        inv = _invert(tiny, photo_x0, skip=36)
        assert inv.nfe == 64 and tiny.nfe - n0 == 64
        assert calls == [2] * 64  # unconditional and conditional branch in one forward pass
        calls.clear()
        n0 = tiny.nfe
        targets = ["a photo of a cat", "a painting of a flower", "a drawing of a tree"]
        out = EDITORS.build({"name": "text"}).edit(tiny, inv, SOURCE, targets, skip=36)
        assert out.shape == (3, 4, 16, 16)
        assert tiny.nfe - n0 == 64
        assert calls == [6] * 64  # both branches of all three targets in one forward pass
    finally:
        handle.remove()


def test_batched_targets_match_single_edits(tiny, photo_x0) -> None:
    editor = EDITORS.build({"name": "text"})
    inv = _invert(tiny, photo_x0, skip=5, steps=15)
    targets = ["a photo of a cat", "a photo of a dog"]
    both = editor.edit(tiny, inv, SOURCE, targets, skip=5)
    for k, target in enumerate(targets):
        torch.testing.assert_close(
            both[k : k + 1], editor.edit(tiny, inv, SOURCE, [target], skip=5), atol=1e-4, rtol=1e-4
        )
    assert (both[0] - both[1]).abs().max() > 1e-4


def test_bad_arguments(tiny, photo_x0) -> None:
    inverter = INVERTERS.build({"name": "ddpm_edit_friendly"})
    editor = EDITORS.build({"name": "text"})
    with pytest.raises(InputError, match="skip"):
        inverter.invert(tiny, photo_x0, SOURCE, num_steps=10, skip=10)
    with pytest.raises(InputError, match="num_steps"):
        inverter.invert(tiny, photo_x0, SOURCE, num_steps=0)
    with pytest.raises(InputError, match="eta"):
        INVERTERS.build({"name": "ddpm_edit_friendly", "eta": 0.0}).invert(tiny, photo_x0, SOURCE, num_steps=5)
    inv = inverter.invert(tiny, photo_x0, SOURCE, num_steps=10, skip=4)
    with pytest.raises(InputError, match="target"):
        editor.edit(tiny, inv, SOURCE, [], skip=4)
    with pytest.raises(InputError, match="invert with skip <= 2"):
        editor.edit(tiny, inv, SOURCE, ["a cat"], skip=2)
    with pytest.raises(InputError, match="text encoder takes 77"):
        editor.edit(tiny, inv, SOURCE, ["cat " * 100], skip=4)
