"""Test-side process that loads offline models from a cache, as one rank of a torch.distributed group.

``python tests/helpers/cache_builder.py RANK WORLD INIT_FILE MODE [BACKBONE ...]`` joins a gloo
group of WORLD processes (through the file INIT_FILE; no group when WORLD is 1), waits for all of
them, then:

- ``load``: loads each BACKBONE (``tiny``, ``tiny_pixel``, ...) on the CPU from the cache that
  $EDITFRIENDLY_CACHE names, building it on first use, and prints one JSON line per backbone
  with its cache folder and files;
- ``join``: does nothing (a rank that only keeps the group company);
- ``hang``: starts building the ``tiny`` model, writes a first file, prints ``building`` and
  never finishes (the test kills it).

Every process then waits at a barrier, so no rank leaves the group before the others are done.
Run as a script by tests/test_model_cache.py, never imported.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> int:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    rank, world, init_file, mode, *backbones = argv
    if int(world) > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=int(rank), world_size=int(world))
        dist.barrier()
    if mode == "load":
        from framework.backbone import load_backbone
        from plugins.backbones.pixel_ddpm import tiny_pixel_path
        from plugins.backbones.tiny import TinyBackbone, tiny_model_path

        for name in backbones:
            backbone = load_backbone(name, device="cpu")
            path_of = tiny_model_path if isinstance(backbone, TinyBackbone) else tiny_pixel_path
            folder = path_of(backbone.tiny_options)
            files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
            print(json.dumps({"rank": int(rank), "backbone": name, "folder": str(folder), "files": files}), flush=True)
    elif mode == "hang":
        import plugins.backbones.tiny as tiny

        def hang(folder: Path, *args: object) -> None:
            (folder / "model_index.json").write_text("{}")
            print("building", flush=True)
            while True:
                time.sleep(1)

        tiny.build_tiny_model = hang
        tiny.tiny_model_path(tiny.TinyOptions())
    if int(world) > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main(sys.argv[1:]))
