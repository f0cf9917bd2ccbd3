"""framework.edit: the one place where an edit's cost (wall seconds, network evaluations) is measured."""

from __future__ import annotations

import time

import pytest
import torch

from framework import edit as edit_module
from framework.edit import edit_inversion, invert_and_edit, invert_image, measure_cost
from framework.registry import EDITORS, INVERTERS


class CountingBackbone:
    """Stands in for a backbone: a device and an ``nfe`` counter."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.nfe = 0


def test_measure_cost_counts_the_block_only():
    bb = CountingBackbone()
    bb.nfe = 5  # evaluations before the block are not the block's
    with measure_cost(bb) as cost:
        bb.nfe += 3
        time.sleep(0.05)
    assert cost.nfe == 3
    assert 0.05 <= cost.seconds < 5


def test_measure_cost_synchronizes_cuda_around_the_clock(monkeypatch):
    """On CUDA the queued kernels of the block are waited for before the clock stops (and those
    of earlier work before it starts), without needing a GPU to check the order."""
    events: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(f"sync {device}"))
    real_clock = time.perf_counter

    def clock() -> float:
        events.append("clock")
        return real_clock()

    monkeypatch.setattr(edit_module.time, "perf_counter", clock)
    bb = CountingBackbone("cuda:1")
    with measure_cost(bb):
        events.append("work")
    assert events == ["sync cuda:1", "clock", "work", "sync cuda:1", "clock"]


def test_measure_cost_leaves_cost_empty_when_the_block_fails():
    bb = CountingBackbone()
    with pytest.raises(RuntimeError), measure_cost(bb) as cost:
        bb.nfe += 2
        raise RuntimeError("boom")
    assert (cost.seconds, cost.nfe) == (0.0, 0)


def test_phases_report_their_own_network_evaluations(tiny):
    """Inversion: N - skip conditional+unconditional passes of the tiny model (one batched call
    each); the edit of K targets: one batched pass per step. The two phases do not overlap."""
    n_steps, skip = 6, 2
    inverter = INVERTERS.build({"name": "ddpm_edit_friendly", "guidance_scale": 3.5})
    editor = EDITORS.build({"name": "text", "guidance_scale": 9})
    image = torch.zeros(1, 3, tiny.resolution, tiny.resolution)
    before = tiny.nfe
    inv = invert_image(tiny, inverter, image, "a photo", num_steps=n_steps, skip=skip, seed=0)
    ed = edit_inversion(tiny, editor, inv.inversion, "a photo", ["a cat", "a dog"], skip=skip, seed=0)
    assert inv.nfe == inv.inversion.nfe == n_steps - skip
    assert ed.nfe == n_steps - skip
    assert tiny.nfe - before == inv.nfe + ed.nfe
    assert inv.seconds > 0 and ed.seconds > 0
    assert ed.images.shape == (2, 3, tiny.resolution, tiny.resolution)

    both = invert_and_edit(
        tiny, inverter, editor, image, "a photo", ["a cat", "a dog"], num_steps=n_steps, skip=skip, seed=0
    )
    assert (both.inversion_nfe, both.edit_nfe) == (inv.nfe, ed.nfe)
    torch.testing.assert_close(both.images, ed.images, rtol=0, atol=0)  # same seeds, same edit
