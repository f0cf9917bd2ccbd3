"""What the commands print: the results and real warnings, not the libraries' tips, deprecation
notices about their own code, or progress-bar redraws in a log file; and the config records
the values that ran."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "data" / "digit_seven.png"
SOURCE = "a red seven on a black background"
#: what must not reach a user: Lightning's litlogger tip, torch's LeafSpec deprecation (raised
#: by Lightning's code), wandb's "anonymous" notice, and progress bars drawn into a pipe
NOISE = ("litlogger", "LeafSpec", "anonymous setting", "\x1b[A", "step/s", "Predicting", "it/s]")


def run_command(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``editfriendly run`` of two digits items (4 steps, wandb offline, its default logger) in a
    fresh process whose stdout and stderr are pipes, as in a log file. WANDB_SILENT is unset:
    wandb's own notices would show."""
    data = tmp_path / "items.yaml"
    data.write_text(
        "".join(
            f"- {{id: item{k}, init_img: {IMAGE}, source_prompt: {SOURCE}, target_prompts: [a {c} seven on a black "
            "background]}\n"
            for k, c in enumerate(("blue", "green"))
        )
    )
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        f"backbone: digits\ndata: {{name: yaml_list, path: {data}}}\ninverter: ddpm_edit_friendly\neditor: text\n"
        "num_steps: 4\nskip: 0\nmetrics: [time]\ntrainer: {accelerator: cpu, devices: 1}\n"
        f"logger: {{name: wandb, mode: offline}}\noutput_dir: {tmp_path / 'out'}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SILENT"}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    return subprocess.run(
        [sys.executable, "-m", "framework.cli", "run", str(cfg), *overrides],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )


def assert_quiet(proc: subprocess.CompletedProcess) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    found = [n for n in NOISE if n in out]
    assert not found, (found, out[-3000:])
    assert "wrote " in proc.stderr and "results.csv (2 rows: 2 computed, 0 reused)" in proc.stderr


def test_run_output_holds_no_library_noise(tmp_path: Path) -> None:
    assert_quiet(run_command(tmp_path))


@pytest.mark.slow
def test_two_process_run_output_holds_no_library_noise(tmp_path: Path) -> None:
    assert_quiet(run_command(tmp_path, "trainer.devices=2"))


def test_the_quiet_filters_drop_only_their_own_messages(recwarn) -> None:
    import logging
    import warnings

    from framework.experiment.loggers import quiet_libraries

    quiet_libraries()
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    handler = Keep()
    logger.addHandler(handler)
    try:
        logger.warning("💡 Tip: ... try installing [litlogger](https://pypi.org/project/litlogger/) ...")
        logger.warning("GPU available: False, used: False")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["GPU available: False, used: False"]
    warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
    warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in recwarn] == ["something else is deprecated"]


def test_wandb_logger_leaves_out_the_anonymous_argument(tmp_path: Path) -> None:
    from framework.experiment.loggers import build_logger

    logger = build_logger({"name": "wandb", "mode": "offline"}, tmp_path, "x")
    assert "anonymous" not in logger._wandb_init


def test_progress_bars_only_on_a_terminal() -> None:
    import io

    from framework.progress import interactive

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert interactive(Terminal()) and interactive(Terminal(), Terminal())
    assert not interactive(io.StringIO()) and not interactive(Terminal(), io.StringIO())


def test_edit_records_the_clip_sample_it_used(tmp_path: Path, capsys) -> None:
    from framework.cli import main

    out = tmp_path / "out"
    args = ["edit", "--backbone", "digits", "--image", str(IMAGE), "--source", SOURCE, "--steps", "3", "--skip", "0"]
    assert main([*args, "--target", "a blue seven on a black background", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "step/s" not in err and "\r" not in err  # no bars into a pipe
    config = yaml.safe_load((out / "config.yaml").read_text())
    edit = json.loads((out / "edits.jsonl").read_text().splitlines()[0])
    assert config["backbone"]["clip_sample"] is True  # the scheduler config's, as edits.jsonl says
    assert edit["backbone"]["clip_sample"] is True
    # an explicit value stays what it was
    assert main([*args, "--target", "a green seven on a black background", "--out", str(tmp_path / "o2"),
                 "backbone.clip_sample=false"]) == 0
    assert yaml.safe_load((tmp_path / "o2" / "config.yaml").read_text())["backbone"]["clip_sample"] is False


def test_ruff_is_in_the_dev_extra_pinned_as_ci_pins_it() -> None:
    dev = re.search(r"^dev = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M)
    ci = re.search(r"ruff==([\w.]+)", (ROOT / ".ci" / "run").read_text())
    assert dev and ci and f'"ruff=={ci.group(1)}"' in dev.group(1), dev


def test_no_test_writes_past_pytests_capture() -> None:
    """`pytest -q` shows only the tests' results: no test prints with the capture switched off."""
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for needle in ("capsys.disabled(", "capfd.disabled(", "sys.__stdout__", "sys.__stderr__"):
            if needle in text and path.name != Path(__file__).name:
                offenders.append(f"{path.name}: {needle}")
    assert not offenders, offenders
