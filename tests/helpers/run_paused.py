"""Test-side launcher: run an experiment config that waits, before its first item, for a file.

``python tests/helpers/run_paused.py CONFIG GO_FILE`` runs CONFIG as ``editfriendly run CONFIG
--no-progress`` does (same exit status and ``error:`` lines), with one more Lightning callback:
when prediction starts (the output folder is locked, its config written), the process waits until
GO_FILE exists (at most 300 s). tests/test_run_integrity.py starts two of these at once into
one folder to see that only one of them runs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import lightning.pytorch as pl


class WaitForFile(pl.Callback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        deadline = time.monotonic() + 300
        while not self.path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)


def main(config: str, go: str) -> int:
    from omegaconf import OmegaConf

    from framework.config import compose
    from framework.errors import EditFriendlyError
    from framework.experiment.run import find_experiment, run_experiment

    try:
        experiment = find_experiment(config)
        cfg = compose(experiment=experiment, overrides=[])
        trainer = OmegaConf.to_container(cfg.trainer) if "trainer" in cfg else {}
        cfg.trainer = {**trainer, "enable_progress_bar": False}
        return run_experiment(cfg, experiment, progress=False, callbacks=[WaitForFile(go)])
    except EditFriendlyError as exc:  # as framework.cli.main prints it
        print(f"error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_status", 2))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
