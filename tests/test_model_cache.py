"""The offline model caches (``tiny``, ``tiny_v``, ``tiny_pixel``): each entry is built once, by one
process, checked, and renamed into place complete.

1. an entry found damaged (an emptied ``text_encoder/``, a truncated file) is built again;
2. a builder on a torch.distributed rank other than 0 writes every component (transformers'
   ``save_pretrained`` writes nothing there);
3. builders started together in fresh cache folders (a gloo group, as DDP ranks) all get the
   same complete folder (slow: three processes, twice);
4. a builder killed while it holds the lock leaves nothing that needs cleaning by hand, and a
   process that cannot get the lock waits instead of building beside it;
5. ``editfriendly run example trainer.devices=2`` on fresh caches, several times (slow).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from framework.backbone import load_backbone
from plugins.backbones import tiny as tiny_module
from plugins.backbones.pixel_ddpm import TinyPixelOptions, tiny_pixel_path
from plugins.backbones.tiny import MANIFEST, TinyOptions, entry_is_complete, tiny_model_path
from tests.helpers.runs import read_csv

ROOT = Path(__file__).resolve().parent.parent
BUILDER = ROOT / "tests" / "helpers" / "cache_builder.py"


def start_builders(cache: Path, world: int, modes: list[str], *backbones: str) -> list[subprocess.Popen]:
    """``world`` cache_builder processes in one gloo group, rank r in mode ``modes[r]``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "EDITFRIENDLY_CACHE": str(cache)}
    init = cache.parent / f"{cache.name}-group"
    return [
        subprocess.Popen(
            [sys.executable, str(BUILDER), str(rank), str(world), str(init), modes[rank], *backbones],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for rank in range(world)
    ]


def finish(procs: list[subprocess.Popen]) -> list[dict]:
    """Wait for every process; all must succeed. Their JSON lines."""
    lines, failed = [], []
    for rank, proc in enumerate(procs):
        out, err = proc.communicate(timeout=600)
        if proc.returncode:
            failed.append(f"rank {rank} (status {proc.returncode}):\n{err[-1500:]}")
        lines += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert not failed, "\n".join(failed)
    return lines


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if ".build-" in p.name)


# ----------------------------------------------------------------------------- 1


def test_an_emptied_component_folder_is_rebuilt(tmp_path: Path, tiny) -> None:
    options = TinyOptions(cache_dir=str(tmp_path))
    folder = tiny_model_path(options)
    assert entry_is_complete(folder)
    for f in (folder / "text_encoder").iterdir():  # what a half-written entry looked like
        f.unlink()
    assert (folder / "model_index.json").exists() and not entry_is_complete(folder)

    backbone = load_backbone({"name": "tiny", "cache_dir": str(tmp_path)}, device="cpu")

    assert tiny_model_path(options) == folder and entry_is_complete(folder)
    assert sorted(p.name for p in (folder / "text_encoder").iterdir()) == ["config.json", "model.safetensors"]
    for name, tensor in tiny.text_encoder.state_dict().items():  # the same deterministic weights
        assert torch.equal(backbone.text_encoder.state_dict()[name], tensor), name
    assert leftovers(tmp_path) == []


def test_a_truncated_file_or_a_missing_manifest_is_rebuilt(tmp_path: Path) -> None:
    options = TinyPixelOptions(cache_dir=str(tmp_path))
    folder = tiny_pixel_path(options)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert tiny_pixel_path(options) == folder
    assert weights.read_bytes() == data
    (folder / MANIFEST).unlink()  # an entry of an earlier version, or cut short before the manifest
    assert tiny_pixel_path(options) == folder and entry_is_complete(folder)
    load_backbone({"name": "tiny_pixel", "cache_dir": str(tmp_path)}, device="cpu")


# ----------------------------------------------------------------------------- 2


def test_a_builder_on_rank_1_writes_every_component(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (out,) = finish(start_builders(cache, 2, ["join", "load"], "tiny_v"))
    assert out["rank"] == 1
    assert {"text_encoder/config.json", "text_encoder/model.safetensors", "unet/config.json"} <= set(out["files"])


# ----------------------------------------------------------------------------- 3


@pytest.mark.slow
@pytest.mark.parametrize("round_", [0, 1])
def test_builders_started_together_get_one_complete_folder(tmp_path: Path, round_: int) -> None:
    cache = tmp_path / f"cache{round_}"
    lines = finish(start_builders(cache, 3, ["load"] * 3, "tiny", "tiny_pixel"))
    assert len(lines) == 6
    for name in ("tiny", "tiny_pixel"):
        folders = {line["folder"] for line in lines if line["backbone"] == name}
        assert len(folders) == 1
        assert entry_is_complete(Path(folders.pop()))
    assert leftovers(cache) == []
    entries = sorted(p.name for p in cache.iterdir() if p.is_dir())
    assert len(entries) == 2, entries  # one entry per model, nothing half-built beside them


# ----------------------------------------------------------------------------- 4


def test_a_killed_builder_needs_no_cleaning_and_others_wait(tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    (holder,) = start_builders(cache, 1, ["hang"])
    try:
        assert holder.stdout.readline().strip() == "building", holder.stderr.read()[-3000:]
        # while it builds, another process waits for it instead of building beside it
        monkeypatch.setattr(tiny_module, "LOCK_TIMEOUT_SECONDS", 1.0)
        start = time.perf_counter()
        with pytest.raises(RuntimeError, match="waiting for another process to build"):
            tiny_model_path(TinyOptions(cache_dir=str(cache)))
        assert time.perf_counter() - start >= 0.9
        assert len(leftovers(cache)) == 1  # the holder's folder in the making, untouched
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=60)
    monkeypatch.setattr(tiny_module, "LOCK_TIMEOUT_SECONDS", 60.0)
    folder = tiny_model_path(TinyOptions(cache_dir=str(cache)))
    assert entry_is_complete(folder)
    assert leftovers(cache) == []


# ----------------------------------------------------------------------------- 5


@pytest.mark.slow
def test_two_process_example_run_on_fresh_caches(tmp_path: Path) -> None:
    short = [
        "trainer.accelerator=cpu", "trainer.devices=2", "logger.name=none",
        "methods.ef_text.num_steps=4", "methods.ef_text.skip=1", "methods.ef_text.sweep.skip=[1]",
    ]
    for k in range(3):
        cache, out = tmp_path / f"cache{k}", tmp_path / f"run{k}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "EDITFRIENDLY_CACHE": str(cache)}
        proc = subprocess.run(
            [sys.executable, "-m", "framework.cli", "run", "example", "--no-progress", f"output_dir={out}", *short],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = read_csv(out / "results.csv")
        assert len(rows) == 10 and all(r["status"] == "ok" for r in rows)  # 5 edits x 2 guidance scales
        (entry,) = [p for p in cache.iterdir() if p.is_dir() and p.name.startswith("tiny-")]
        assert entry_is_complete(entry) and leftovers(cache) == []
