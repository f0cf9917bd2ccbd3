"""The core (registries, every inverter/editor/dataset plugin, ``editfriendly list`` and ``edit``)
runs without importing Lightning: only ``framework.experiment`` (``editfriendly run``) needs it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Run in a fresh interpreter: the test process itself has imported Lightning long ago.
PROBE = textwrap.dedent(
    """
    import dataclasses
    import sys
    from pathlib import Path

    import framework.registry
    from framework.registry import DATASETS, EDITORS, INVERTERS

    built = []
    for registry in (INVERTERS, EDITORS):
        for name in registry.names():
            built.append(registry.build({"name": name}))
    example = Path(sys.argv[1]) / "data" / "example.yaml"
    for name in DATASETS.names():
        fields = {f.name for f in dataclasses.fields(DATASETS.get(name).Options)}
        dataset = DATASETS.build({"name": name, **({"path": str(example)} if "path" in fields else {})})
        built.append(dataset)
        if name == "yaml_list":
            assert dataset.items(), "the example dataset lists items"

    from framework.cli import main

    assert main(["list"]) == 0
    assert main(sys.argv[2:]) == 0  # editfriendly edit on the tiny backbone
    def lightning():
        names = ("lightning", "pytorch_lightning", "lightning_fabric")
        return sorted(m for m in sys.modules if m.split(".")[0] in names)

    print("BUILT", len(built))
    print("LIGHTNING", lightning()[:5])
    import framework.experiment.run  # the runner does load it: the probe can see it

    print("RUNNER", "lightning" in lightning())
    """
)


def test_registry_plugins_list_and_edit_do_not_import_lightning(photo_path: Path, tmp_path: Path) -> None:
    edit = ["edit", "--image", str(photo_path), "--source", "a photo of a flower", "--target", "a photo of a cat",
            "--backbone", "tiny", "--steps", "3", "--skip", "1", "--out", str(tmp_path / "out"), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}  # EDITFRIENDLY_CACHE: conftest's
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(ROOT), *edit], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from framework.registry import DATASETS, EDITORS, INVERTERS

    expected = len(INVERTERS.names()) + len(EDITORS.names()) + len(DATASETS.names())
    assert f"BUILT {expected}\n" in proc.stdout
    assert "LIGHTNING []" in proc.stdout, proc.stdout[-2000:]
    assert "RUNNER True" in proc.stdout
    assert list((tmp_path / "out").rglob("*.png")), "the edit wrote its images"

