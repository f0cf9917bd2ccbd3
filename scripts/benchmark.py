#!/usr/bin/env python
"""Time a default edit (edit-friendly inversion + text edit) side by side, in one run:

* sequential vs. batched inversion (``--timestep-batch 1,16,auto``: timesteps per network pass),
* float32 vs. half precision (``--dtypes float32,bfloat16,float16``: UNet, text encoder and VAE),
* per phase: wall seconds (best of ``--repeats`` runs, the variants interleaved so that a
  change of machine load hits all of them; medians in the JSON), network evaluations (UNet
  calls, counted by a forward hook), the network-only floor (the same calls, same shapes, back
  to back on random inputs) and the overhead over it, and peak memory (CUDA:
  ``torch.cuda.max_memory_allocated``; CPU: the peak rise of the resident set, sampled every
  2 ms in a separate, untimed run),
* per-edit time (encode + inversion + edit + decode) and its speedup over float32 sequential,
* ``editfriendly run`` throughput (edits per minute, whole command wall time: start-up and
  model loading included) with 1 and 2 processes, run as subprocesses on a small config,

and writes JSON (``--json``), a plot (``--plot``) and a Markdown table (stdout).

    python scripts/benchmark.py --backbone tiny --device cpu                 # CPU, no download
    python scripts/benchmark.py --backbone sd14_random --device cuda \\
        --dtypes float32,float16 --timestep-batch 1,auto                     # GPU, SD 1.4 sizes
    python scripts/benchmark.py --backbone sd14 --device cuda --dtypes float16   # real weights
    python scripts/benchmark.py --backbone sdxl_random --device cuda \
        --dtypes float32,float16 --timestep-batch 1,4,auto                   # GPU, SDXL at 1024²
    python scripts/benchmark.py --backbone tiny_xl --device cpu              # CPU, SDXL's code path

CUDA timings synchronise the device around every timed region. ``sd14_random`` and
``sdxl_random`` have random weights: their timings and memory are SD 1.4's and SDXL base's
(1024² by default, the model's resolution), their images are noise. With ``float16`` the SDXL
backbones keep the VAE in float32 (its ``force_upcast``), and the schedule and the noise maps
are float32 with every backbone.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from framework.backbone import load_backbone
from framework.batched_inversion import auto_choice, auto_measurements
from framework.conditioning import broadcast_rows
from framework.registry import EDITORS, INVERTERS

SOURCE = "a photo of a cat"


# ----------------------------------------------------------------------------- measuring
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """(seconds, result) with the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


class UNetCalls:
    """Records the UNet forward passes inside the block: rows and per-row-timestep flag."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.unet = unet
        self.calls: list[tuple[tuple[int, ...], bool]] = []

    def _hook(self, module, args, kwargs, output) -> None:
        sample = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs.get("timestep")
        self.calls.append((tuple(sample.shape), isinstance(t, torch.Tensor) and t.dim() > 0))

    def __enter__(self) -> UNetCalls:
        self.handle = self.unet.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


@torch.no_grad()
def network_floor(backbone: Any, calls: list[tuple[tuple[int, ...], bool]]) -> float:
    """Seconds for the recorded UNet calls replayed back to back (same shapes) on random inputs."""
    device = backbone.device
    cond1 = backbone.encode_prompt(["a photo"])
    g = torch.Generator().manual_seed(0)
    inputs = []
    for shape, per_row in calls:
        x = torch.randn(shape, generator=g).to(device)
        t = torch.randint(1, 999, (shape[0],), generator=g).to(device) if per_row else 500
        inputs.append((x, t, broadcast_rows(cond1, shape[0])))
    for shape in {s for s, _ in calls}:  # warm-up, once per shape
        x, t, c = next(i for i in inputs if tuple(i[0].shape) == shape)
        backbone.model_output(x, t, c)
    sync(device)
    start = time.perf_counter()
    for x, t, c in inputs:
        backbone.model_output(x, t, c)
    sync(device)
    return time.perf_counter() - start


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Peak extra bytes while ``fn`` runs: CUDA allocator peak over the start, or on the CPU
    the resident set's peak rise (sampled every 2 ms; None where /proc is missing)."""
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    if not Path("/proc/self/statm").exists():
        fn()
        return None
    gc.collect()
    base = _rss()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return int(max(peak[0], _rss()) - base)


class Phase:
    """One timed variant: its wall times, the UNet calls of its last run, its floors."""

    def __init__(self, backbone: Any, fn: Callable[[], Any]) -> None:
        self.backbone, self.fn = backbone, fn
        self.times: list[float] = []
        self.floors: list[float] = []
        self.calls: list[tuple[tuple[int, ...], bool]] = []
        self.out: Any = None

    def run(self) -> None:
        """One timed run, then the network floor of the calls it made."""
        with UNetCalls(self.backbone.unet) as rec:
            dt, self.out = timed(self.fn, self.backbone.device)
        self.times.append(dt)
        self.calls = rec.calls
        self.floors.append(network_floor(self.backbone, rec.calls))

    def stats(self) -> dict[str, Any]:
        """Best-of-N wall and floor seconds (the least disturbed runs on a shared machine),
        medians too, UNet calls, overhead over the floor, and peak memory of one more run."""
        seconds, floor = min(self.times), min(self.floors)
        return {
            "seconds": seconds,
            "median_seconds": statistics.median(self.times),
            "all_seconds": self.times,
            "nfe": len(self.calls),
            "rows_per_call": sorted({s[0] for s, _ in self.calls}),
            "floor_seconds": floor,
            "median_floor_seconds": statistics.median(self.floors),
            "overhead_pct": 100 * (seconds - floor) / floor,
            "peak_bytes": peak_memory(self.fn, self.backbone.device),
        }


def free(backbone: Any) -> None:
    device = backbone.device
    del backbone
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- one dtype
def bench_dtype(args: argparse.Namespace, dtype: str, batches: list[int | str]) -> list[dict[str, Any]]:
    """All inversion variants and the edit for one network dtype."""
    backbone = load_backbone(args.backbone, device=args.device, dtype=dtype)
    device = backbone.device
    res = args.resolution or backbone.resolution
    g = torch.Generator().manual_seed(0)
    image = (torch.rand(1, 3, res, res, generator=g) * 2 - 1).to(device)
    targets = [f"a painting of a dog {k}" for k in range(args.targets)]
    editor = EDITORS.build({"name": "text"})  # the paper's target guidance
    same = EDITORS.build({"name": "text", "guidance_scale": 3.5})  # the inversion's: reconstructs x0
    with torch.no_grad():
        backbone.encode_image(image)  # warm-up
        enc_s, x0 = timed(lambda: backbone.encode_image(image), device)

    def inverter(batch: int | str) -> Any:
        return INVERTERS.build({"name": "ddpm_edit_friendly", "timestep_batch": batch})

    def invert(batch: int | str) -> Any:
        return inverter(batch).invert(backbone, x0, SOURCE, num_steps=args.steps, skip=args.skip,
                                      generator=torch.Generator().manual_seed(0))

    reference = invert(1)  # warm-up, and the sequential maps the others are compared with
    edit = Phase(backbone, lambda: editor.edit(backbone, reference, SOURCE, targets, skip=args.skip))
    edit.fn()  # warm-up
    inversions = {}
    for batch in batches:
        if batch == "auto":
            for _ in range(6):  # let auto finish its measurement (real inversions)
                invert("auto")
                if all(isinstance(v, int) for v in auto_choice(backbone).values()):
                    break
        else:
            invert(batch)  # warm-up of this batch shape
        inversions[batch] = Phase(backbone, lambda b=batch: invert(b))
    for _ in range(args.repeats):  # interleaved, so a change of machine load hits every variant
        edit.run()
        for phase in inversions.values():
            phase.run()
    edit_stats = edit.stats()
    with torch.no_grad():
        backbone.decode(edit.out[:1])
        dec_s, _ = timed(lambda: backbone.decode(edit.out), device)
    rows = []
    for batch, phase in inversions.items():
        inv_stats, inv = phase.stats(), phase.out
        recon = same.edit(backbone, inv, SOURCE, [SOURCE], skip=args.skip)
        row = {
            "dtype": dtype,
            "timestep_batch": batch,
            "device": str(device),
            "inversion": inv_stats,
            "edit": edit_stats,
            "encode_seconds": enc_s,
            "decode_seconds": dec_s,
            "per_edit_seconds": enc_s + inv_stats["seconds"] + edit_stats["seconds"] + dec_s,
            "max_abs_zs_vs_sequential": float((inv.zs - reference.zs).abs().max()),
            "reconstruction_max_abs": float((recon - x0).abs().max()),
        }
        if batch == "auto":
            row["auto_choice"] = {str(k): v for k, v in auto_choice(backbone).items()}
            row["auto_seconds_per_step"] = {str(k): v for k, v in auto_measurements(backbone).items()}
        rows.append(row)
    describe = backbone.describe()
    for row in rows:
        row["backbone"] = describe
    free(backbone)
    return rows


# ----------------------------------------------------------------------------- the runner
def run_dataset(workdir: Path, copies: int) -> Path:
    """The example dataset (3 images, 5 edits) repeated ``copies`` times, with distinct ids."""
    import yaml

    items = yaml.safe_load((ROOT / "data" / "example.yaml").read_text())
    out = []
    for c in range(copies):
        for item in items:
            path = ROOT / "data" / item["init_img"]
            out.append({**item, "init_img": str(path), "id": f"{path.stem}_{c}"})
    target = workdir / "data.yaml"
    target.write_text(yaml.safe_dump(out))
    return target


def run_throughput(args: argparse.Namespace, processes: int, workdir: Path) -> dict[str, Any]:
    """``editfriendly run`` on the example dataset repeated ``--run-copies`` times (3 images and
    5 edits per copy) with ``processes`` processes; edits per minute over the whole command's
    wall time (start-up, model loading and DDP set-up included)."""
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda" and torch.cuda.device_count() < processes:
        return {"processes": processes, "skipped": f"needs {processes} GPUs, {torch.cuda.device_count()} here"}
    out = workdir / f"run{processes}"
    from framework.config import backbone_config

    backbone = json.dumps({**dict(backbone_config(args.backbone)), "dtype": args.run_dtype})
    strategy = "ddp" if processes > 1 else "auto"
    accel = "gpu" if device.type == "cuda" else "cpu"
    cfg = workdir / f"run{processes}.yaml"
    cfg.write_text(
        f"backbone: {backbone}\n"
        f"data: {{name: yaml_list, path: {run_dataset(workdir, args.run_copies)}}}\n"
        "methods:\n  - name: ef_text\n"
        f"    inverter: {{name: ddpm_edit_friendly, timestep_batch: {args.run_timestep_batch}}}\n"
        f"    editor: {{name: text}}\n    num_steps: {args.steps}\n    skip: {args.skip}\n"
        f"metrics: [time]\ntrainer: {{accelerator: {accel}, devices: {processes}, strategy: {strategy}}}\n"
        f"logger: {{name: none}}\noutput_dir: {out}\nseed: 0\n"
    )
    # --threads per process if given (1 avoids oversubscribing a busy CPU), else the cores shared
    threads = args.threads or max(1, (os.cpu_count() or 1) // processes)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "framework.cli", "run", str(cfg), "--no-progress"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.run_timeout)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"processes": processes, "failed": proc.stderr[-2000:]}
    results = out / "results.csv"
    edits = max(0, len(results.read_text().strip().splitlines()) - 1) if results.exists() else 0
    return {"processes": processes, "threads_per_process": threads, "edits": edits,
            "wall_seconds": wall, "edits_per_minute": 60 * edits / wall}


# ----------------------------------------------------------------------------- output
def mib(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:.1f}"


def table(result: dict[str, Any]) -> str:
    rows = result["rows"]
    base = next((r for r in rows if r["dtype"] == "float32" and r["timestep_batch"] == 1), rows[0] if rows else None)
    lines = [] if not rows else [
        "| dtype | timestep_batch | inversion s | inv. NFE | inv. floor s | inv. overhead | inv. peak MiB "
        "| vs seq. | edit s | edit NFE | edit overhead | per edit s | speedup |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    seq = {r["dtype"]: r["inversion"]["seconds"] for r in rows if r["timestep_batch"] == 1}
    for r in rows:
        inv, ed = r["inversion"], r["edit"]
        tb = r["timestep_batch"]
        if tb == "auto":
            picks = [v for v in r.get("auto_choice", {}).values()]
            tb = f"auto ({picks[0] if len(picks) == 1 else picks})"
        ratio = inv["seconds"] / seq[r["dtype"]] if r["dtype"] in seq else float("nan")
        lines.append(
            f"| {r['dtype']} | {tb} | {inv['seconds']:.3f} | {inv['nfe']} | {inv['floor_seconds']:.3f} "
            f"| {inv['overhead_pct']:+.0f}% | {mib(inv['peak_bytes'])} | {ratio:.2f}x | {ed['seconds']:.3f} "
            f"| {ed['nfe']} | {ed['overhead_pct']:+.0f}% | {r['per_edit_seconds']:.3f} "
            f"| {base['per_edit_seconds'] / r['per_edit_seconds']:.2f}x |"
        )
    runs = [r for r in result.get("run", []) if "edits_per_minute" in r]
    if runs:
        lines += ["", "| `editfriendly run` processes | threads each | edits | wall s | edits/min |",
                  "|---|---|---|---|---|"]
        for r in runs:
            lines.append(f"| {r['processes']} | {r['threads_per_process']} | {r['edits']} | "
                         f"{r['wall_seconds']:.1f} | {r['edits_per_minute']:.1f} |")
    for r in result.get("run", []):
        if "edits_per_minute" not in r:
            lines.append(f"\n`editfriendly run` with {r['processes']} processes: "
                         f"{r.get('skipped') or 'failed: ' + r.get('failed', '')[-300:]}")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    labels = [f"{r['dtype']}\nbatch {r['timestep_batch']}" for r in rows]
    runs = [r for r in result.get("run", []) if "edits_per_minute" in r]
    fig, axes = plt.subplots(1, 2 if runs else 1, figsize=(11 if runs else 7, 4), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 1]} if runs else None)
    ax = axes[0, 0]
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["inversion"]["seconds"] for r in rows], 0.4, label="inversion (wall)")
    ax.bar([x - 0.2 for x in xs], [r["inversion"]["floor_seconds"] for r in rows], 0.4, fill=False,
           hatch="//", label="inversion network floor")
    ax.bar([x + 0.2 for x in xs], [r["per_edit_seconds"] for r in rows], 0.4, label="whole edit (wall)")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("seconds")
    walls = [r["per_edit_seconds"] for r in rows] + [r["inversion"]["seconds"] for r in rows]
    if max(walls) > 10 * min(walls):  # e.g. float16 on a CPU beside float32: a log scale
        ax.set_yscale("log")
    ax.set_title(f"{result['backbone']} on {result['device_name']}, {result['steps']} steps, skip {result['skip']}")
    ax.legend(fontsize=8)
    if runs:
        ax = axes[0, 1]
        ax.bar([str(r["processes"]) for r in runs], [r["edits_per_minute"] for r in runs], color="C2")
        ax.set_xlabel("editfriendly run processes")
        ax.set_ylabel("edits / minute")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def device_name(device: str) -> str:
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return torch.cuda.get_device_name(torch.device("cuda" if device == "auto" else device))
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = torch.get_num_threads()
    return f"CPU {cpu}, {threads} torch thread{'s' if threads > 1 else ''}"


def parse_batch(text: str) -> list[int | str]:
    out: list[int | str] = []
    for part in text.split(","):
        part = part.strip()
        out.append("auto" if part == "auto" else int(part))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="tiny", help="backbone preset, name, hub id or folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma list of float32|float16|bfloat16")
    p.add_argument("--timestep-batch", default="1,16,auto", help="comma list of integers and/or auto")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--skip", type=int, default=36)
    p.add_argument("--targets", type=int, default=1, help="number of target prompts edited as one batch")
    p.add_argument("--resolution", type=int, default=None, help="image side (default: the model's)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads, here and in each editfriendly run process (default: torch's; "
                        "the run processes then share the cores)")
    p.add_argument("--run-processes", default="1,2", help="comma list; empty: skip editfriendly run")
    p.add_argument("--run-dtype", default="float32")
    p.add_argument("--run-copies", type=int, default=3, help="copies of the 3-image example dataset")
    p.add_argument("--run-timestep-batch", default="1")
    p.add_argument("--run-timeout", type=int, default=1800)
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--plot", help="write a plot to this PNG file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    result: dict[str, Any] = {
        "backbone": args.backbone,
        "device_name": device_name(args.device),
        "torch": torch.__version__,
        "steps": args.steps,
        "skip": args.skip,
        "targets": args.targets,
        "repeats": args.repeats,
        "rows": [],
    }
    batches = parse_batch(args.timestep_batch)
    for dtype in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        result["rows"] += bench_dtype(args, dtype, batches)
    result["run"] = []
    procs = [int(x) for x in args.run_processes.split(",") if x.strip()]
    if procs:
        with tempfile.TemporaryDirectory(prefix="ef-bench-") as tmp:
            for n in procs:
                result["run"].append(run_throughput(args, n, Path(tmp)))
    result["table"] = table(result)
    print(f"{args.backbone} on {result['device_name']}: {args.steps} steps, skip {args.skip}, "
          f"{args.targets} target(s), best of {args.repeats} interleaved runs; floor = the same UNet calls alone")
    print(result["table"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    if args.plot:
        plot(result, Path(args.plot))
    return result


if __name__ == "__main__":
    main()
