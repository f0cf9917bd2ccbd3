"""Eq. 5 with the network evaluated for several timesteps per forward pass.

Why this is possible: the edit-friendly auxiliary sequence draws every x_i independently from
x0 (eq. 6), so every network input of the extraction, ε̂(x_i, t_i) for i = n..1, is known before
the first call. (The same holds for any sequence drawn without the model, e.g. CycleDiffusion's
posterior chain.) The sequential loop evaluates one step per pass; here ``batch`` steps share
one pass, each row with its own timestep (:meth:`framework.backbone.Backbone.predict_noise`
accepts per-row timesteps; with guidance the rows are [uncond × steps × images, cond × steps ×
images]), and a cheap float32 sweep then extracts the maps in the sequential order.

The in-place correction carries over. The sequential loop resets x_{i-1} := μ̂_i(x_i) + σ_i z_i
after extracting z_i, so that the stored sequence is exactly what the reverse pass (eq. 3)
computes from the stored x_i and the maps; the reset changes x_{i-1} only by rounding (a few
ulps). The batched sweep does the same reset in the same order, with the same float32
arithmetic; the only difference is the network input: the rows of a chunk below its first step
are evaluated at the uncorrected eq. 6 draws (their corrections are not known when the chunk's
pass runs), while the first row of each chunk sees its corrected value, as in the sequential
loop. The two inputs differ by rounding, so the ε̂ (and the maps, and the reconstruction) agree
with the sequential path to float tolerance, not bit for bit; the reverse pass still reproduces
x0 to ≤ 1e-4 in float32 (tests/test_batched_inversion.py). ``batch`` = 1 is the sequential loop.
This needs a row's ε̂ not to depend on the rest of its batch beyond float32 rounding: in half
precision (and TF32) the kernels round per batch shape, so a batched half-precision inversion
reconstructs x0 only approximately (~5e-2 in bfloat16 on the tiny model), where the sequential
one is bit-exact (its reverse pass repeats the very same calls).

``auto`` picks the batch:
* on CUDA from memory: the first step runs alone and its peak extra memory m (activations of
  one step's rows) is measured; the batch is the number of steps that fit in 80% of the free
  memory (free in the driver plus the caching allocator's unused reserve), at most n. A GPU is
  under-used by one step's 2 rows, and a larger batch costs nothing but memory.
* elsewhere (CPU, MPS) by measurement: the first chunks run with 1, 2, 4, ... steps, each size
  twice (real work, not a separate probe), and the second run's seconds per step are timed (the
  first pays the one-off set-up of a new batch shape); doubling stops after two
  doublings in a row that each gain less than 5% (or at 32 steps), and the fastest size seen
  is used for the rest. On a CPU a small
  network's passes are dominated by per-call overhead, which batching removes; a large one is
  compute-bound, so the measurement settles on a small batch there.
The choice (or the CUDA per-step memory) is cached per backbone, latent shape, image count and
guidance setting, so later inversions skip the measurement; an inversion too short to finish
the CPU measurement leaves it to the next one, which resumes it where it stopped.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from framework import progress
from framework.conditioning import tile
from framework.errors import ConfigError
from framework.process import ProcessSchedule

if TYPE_CHECKING:
    from framework.backbone import Backbone
    from framework.conditioning import Cond

#: doubling stops when the next size improves seconds/step by less than this fraction
AUTO_MIN_GAIN = 0.05
#: share of the free GPU memory the chosen batch may use
AUTO_MEMORY_FRACTION = 0.8
#: the CPU measurement never goes beyond this many steps per pass
AUTO_MAX_CPU = 32

_AUTO_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple, Any]] = weakref.WeakKeyDictionary()
_MEASURED: weakref.WeakKeyDictionary[Any, dict[tuple, Any]] = weakref.WeakKeyDictionary()


def check_timestep_batch(value: Any, what: str = "ddpm_edit_friendly timestep_batch") -> int | str:
    """An integer >= 1 or ``"auto"``; anything else is a :class:`ConfigError`."""
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be an integer >= 1 or 'auto', got {value!r}")
    return value


def evaluate_steps(
    backbone: Backbone,
    xts: Tensor,
    steps: list[int],
    schedule: ProcessSchedule,
    cond: Cond,
    uncond: Cond,
    guidance_scale: float,
) -> Tensor:
    """ε̂(x_i, t_i) for the given steps in ONE forward pass: (len(steps), B, C, h, w) float32.

    ``xts`` is (n+1, B, C, h, w); row s·B + k of the pass is image k at step ``steps[s]``.
    ``cond``/``uncond`` have 1 or B rows."""
    s, b = len(steps), xts.shape[1]
    x = xts[steps].reshape(s * b, *xts.shape[2:])
    if s == 1:  # exactly the sequential call (one shared int timestep)
        t: int | float | Tensor = schedule.timestep(steps[0])
    else:
        t = schedule.timesteps[[i - 1 for i in steps]].repeat_interleave(b).to(x.device)
    eps = backbone.predict_noise(x, t, tile(cond, s, b), tile(uncond, s, b), guidance_scale)
    return eps.reshape(s, b, *xts.shape[2:])


def extract_noise_maps_batched(
    backbone: Backbone,
    xts: Tensor,
    schedule: ProcessSchedule,
    cond: Cond,
    uncond: Cond,
    guidance_scale: float,
    batch: int | str,
    zero_last_noise: bool = False,
    desc: str = "invert",
) -> Tensor:
    """Eq. 5 along ``xts`` (n+1, B, C, h, w), ``batch`` timesteps per forward pass (or ``auto``).

    Returns zs (n, B, C, h, w) float32 and corrects ``xts[1..n-1]`` in place exactly as
    :func:`plugins.inverters.ddpm_edit_friendly.extract_noise_maps` does (see the module
    docstring). With an integer batch it makes ceil(n / batch) network calls.
    """
    batch = check_timestep_batch(batch)
    n = xts.shape[0] - 1
    zs = torch.empty_like(xts[1:])
    sizes: _Sizes = _FixedSizes(batch) if isinstance(batch, int) else _auto_sizes(backbone, xts, uncond, guidance_scale)
    top = n
    bar = progress.steps(range(n), desc=desc, total=n)  # a tqdm bar (advanced by hand) or the range
    bar_update = getattr(bar, "update", None)
    try:
        while top >= 1:
            size = min(next(sizes), top)
            steps = list(range(top, top - size, -1))
            start = _now(backbone) if sizes.timed else 0.0  # no device sync unless measuring
            eps = evaluate_steps(backbone, xts, steps, schedule, cond, uncond, guidance_scale)
            sizes.feedback(size, _now(backbone) - start if sizes.timed else 0.0)
            for j, i in enumerate(steps):  # the sequential loop's sweep, in its order
                schedule.noise_map_step(xts, zs, i, eps[j], zero_last_noise)
            if bar_update is not None:
                bar_update(size)
            top -= size
    finally:
        if hasattr(bar, "close"):
            bar.close()
    return zs


def _now(backbone: Backbone) -> float:
    """perf_counter after the device has finished its queued work (CUDA is asynchronous)."""
    device = torch.device(getattr(backbone, "device", "cpu"))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# ----------------------------------------------------------------------------- chunk sizes
class _Sizes(Iterator[int]):
    """An iterator of chunk sizes that may learn from each chunk (its wall time if ``timed``)."""

    #: whether ``feedback`` needs the chunk's wall time (a device sync on CUDA)
    timed: bool = False

    def feedback(self, size: int, seconds: float) -> None:  # optional hook
        """Called after each chunk with its size and (if ``timed``) its wall time."""


class _FixedSizes(_Sizes):
    def __init__(self, batch: int) -> None:
        self.batch = batch

    def __next__(self) -> int:
        return self.batch


def _auto_key(backbone: Backbone, xts: Tensor, uncond: Cond, guidance_scale: float) -> tuple:
    cfg = uncond is not None and float(guidance_scale) != 1 and getattr(backbone, "conditional", True)
    return (str(getattr(backbone, "device", "cpu")), str(getattr(backbone, "dtype", "")), tuple(xts.shape[1:]), cfg)


def _auto_sizes(backbone: Backbone, xts: Tensor, uncond: Cond, guidance_scale: float) -> _Sizes:
    cache = _AUTO_CACHE.setdefault(backbone, {})
    key = _auto_key(backbone, xts, uncond, guidance_scale)
    n = xts.shape[0] - 1
    if torch.device(getattr(backbone, "device", "cpu")).type == "cuda":
        return _CudaMemorySizes(cache, key, n, torch.device(backbone.device))
    found = cache.get(key)
    if isinstance(found, int):
        return _FixedSizes(found)
    if isinstance(found, _MeasuredSizes):
        found.n = n
        return found  # a measurement the last inversion ended before concluding: resume it
    cache[key] = sizes = _MeasuredSizes(cache, key, n)
    _MEASURED.setdefault(backbone, {})[key] = sizes
    return sizes


class _MeasuredSizes(_Sizes):
    """1, 1, 2, 2, 4, 4, ... timed as they run (the second run of each size: the first pays the
    one-off cost of a new batch shape, which later inversions do not); doubling stops after two
    doublings in a row that each gain less than AUTO_MIN_GAIN in seconds/step (one is not enough
    on a busy CPU, where a single timing is noisy) or at AUTO_MAX_CPU; then the fastest size seen
    is used."""

    @property
    def timed(self) -> bool:  # type: ignore[override]
        """Chunks are timed until the choice is made."""
        return self.chosen is None

    def __init__(self, cache: dict, key: tuple, n: int) -> None:
        self.cache, self.key, self.n = cache, key, n  # n: steps of the current inversion
        self.per_step: dict[int, float] = {}
        self.warm: set[int] = set()  # sizes run once already (their first call is not timed)
        self.next_size = 1
        self.misses = 0
        self.chosen: int | None = None

    def __next__(self) -> int:
        return self.chosen if self.chosen is not None else self.next_size

    def feedback(self, size: int, seconds: float) -> None:
        if self.chosen is not None:
            return
        if size != self.next_size:  # a chunk cut short by the end of the sequence: not timed,
            if self.next_size > self.n and self.per_step:  # and sizes beyond n never run here
                self._choose()
            return
        if size not in self.warm:  # a new batch shape pays one-off set-up (kernel selection,
            self.warm.add(size)  # allocations): run it again, and time that
            return
        self.per_step[size] = seconds / size
        prev = self.per_step.get(size // 2)
        self.misses = self.misses + 1 if prev is not None and self.per_step[size] > (1 - AUTO_MIN_GAIN) * prev else 0
        if self.misses >= 2 or 2 * size > AUTO_MAX_CPU:
            self._choose()
        else:
            self.next_size = 2 * size

    def _choose(self) -> None:
        self.chosen = min(self.per_step, key=self.per_step.__getitem__)
        self.cache[self.key] = self.chosen


class _CudaMemorySizes(_Sizes):
    """First step alone (its peak extra memory measured, once per key), then as many steps as
    fit in AUTO_MEMORY_FRACTION of the free memory. The cache entry is
    ``{"bytes_per_step": m, "steps_per_pass": last choice}``."""

    def __init__(self, cache: dict, key: tuple, n: int, device: torch.device) -> None:
        self.cache, self.key, self.n, self.device = cache, key, n, device
        self.chosen: int | None = None
        if key in cache:
            self.chosen = self._fit(cache[key]["bytes_per_step"])
        else:
            torch.cuda.synchronize(device)
            self.base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)

    def _fit(self, per_step_bytes: int) -> int:
        free, _ = torch.cuda.mem_get_info(self.device)
        free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        chosen = max(1, min(self.n, int(AUTO_MEMORY_FRACTION * free // max(per_step_bytes, 1))))
        self.cache[self.key] = {"bytes_per_step": per_step_bytes, "steps_per_pass": chosen}
        return chosen

    def __next__(self) -> int:
        return self.chosen if self.chosen is not None else 1

    def feedback(self, size: int, seconds: float) -> None:
        if self.chosen is None:
            self.chosen = self._fit(max(torch.cuda.max_memory_allocated(self.device) - self.base, 1))


def auto_choice(backbone: Backbone) -> dict[tuple, Any]:
    """What ``auto`` has settled on for ``backbone``: {(device, dtype, (B, C, h, w), cfg):
    steps per pass} (on CUDA the last inversion's; ``"measuring"`` while the CPU measurement
    has not finished). For reports and the benchmark."""
    out: dict[tuple, Any] = {}
    for key, value in _AUTO_CACHE.get(backbone, {}).items():
        if isinstance(value, dict):
            out[key] = value["steps_per_pass"]
        else:
            out[key] = value if isinstance(value, int) else "measuring"
    return out


def auto_measurements(backbone: Backbone) -> dict[tuple, Any]:
    """What ``auto`` measured: {key: {steps per pass: seconds per step}} on the CPU,
    {key: {"bytes_per_step": ..., "steps_per_pass": ...}} on CUDA."""
    out: dict[tuple, Any] = {k: dict(m.per_step) for k, m in _MEASURED.get(backbone, {}).items()}
    for key, value in _AUTO_CACHE.get(backbone, {}).items():
        if isinstance(value, dict):
            out[key] = dict(value)
    return out


def expected_calls(n: int, batch: int) -> int:
    """Network calls of an integer ``batch`` for n computed steps: ceil(n / batch)."""
    return math.ceil(n / batch)
