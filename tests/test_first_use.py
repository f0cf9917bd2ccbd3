"""First use and failure, on the tiny backbone and the CPU.

One test (or a few) per point:

1. a run never damages an earlier one (refused reruns, --force, every config kept, the summary of
   every row, unknown top-level override keys refused);
2. more devices than items (gloo DDP in a subprocess, slow);
3. an unreachable hub fails after one request with a message naming HF_HUB_OFFLINE=1 and the
   local-folder option; preset typos get "did you mean";
4. the authors' ``test.yaml`` paths (``/example_images/x.jpg`` from the working directory);
5. one ``error:`` line and exit 2 for unwritable output folders, absent devices, huge seeds;
6. wandb's offline run holds real images (table cells, per-item grids) and the config;
7. one log line per message, a short too-long-prompt error, step progress in ``run``, compare
   on an interrupted run;
8. ``threads`` pins each process's CPU threads (the cause of the 1-vs-N-process difference).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SRC = "a photo of a flower"

METHOD = """methods:
  - name: ef
    inverter: {name: ddpm_edit_friendly, guidance_scale: 3.5}
    editor: {name: text, guidance_scale: 15}
    num_steps: 2
    skip: 1
"""
SECOND = """  - name: ef9
    inverter: {name: ddpm_edit_friendly, guidance_scale: 3.5}
    editor: {name: text, guidance_scale: 9}
    num_steps: 2
    skip: 1
"""


def make_items(folder: Path, n: int) -> Path:
    """n small photo crops and their YAML list (ours: paths relative to the file)."""
    from sklearn.datasets import load_sample_image

    folder.mkdir(parents=True, exist_ok=True)
    photo = load_sample_image("china.jpg")
    lines = []
    for k in range(n):
        crop = photo[40 * k : 40 * k + 200, 60 * k : 60 * k + 200]
        Image.fromarray(crop).resize((32, 32)).save(folder / f"p{k}.png")
        lines.append(f"- init_img: p{k}.png\n  source_prompt: a temple {k}\n  target_prompts: [a church, a castle]")
    (folder / "list.yaml").write_text("\n".join(lines) + "\n")
    return folder / "list.yaml"


def experiment(path: Path, data: Path, out: Path, methods: str = METHOD, logger: str = "{name: none}",
               extra: str = "") -> Path:
    path.write_text(
        f"backbone: {{name: tiny}}\ndata: {{name: yaml_list, path: {data}}}\n{methods}metrics: [time]\n"
        f"trainer: {{accelerator: cpu, devices: 1}}\nlogger: {logger}\noutput_dir: {out}\nseed: 0\n{extra}"
    )
    return path


def cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    from framework.cli import main

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main([str(a) for a in args])
    finally:
        torch.set_num_threads(old)
    return code, capsys.readouterr().err


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}
    return env


@pytest.fixture(scope="module")
def items2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_items(tmp_path_factory.mktemp("items2"), 2)


# ----------------------------------------------------------------------------- 1


def test_unknown_top_level_override_is_refused_before_anything_runs(items2: Path, tmp_path: Path, capsys) -> None:
    cfg = experiment(tmp_path / "exp.yaml", items2, tmp_path / "out")
    code, err = cli(capsys, "run", cfg, "ouput_dir=elsewhere")
    assert code == 2
    assert "unknown key 'ouput_dir'" in err and "did you mean 'output_dir'?" in err
    assert err.count("\n") == 1 and err.startswith("error:")
    assert not (tmp_path / "out").exists() and not (tmp_path / "elsewhere").exists()
    code, err = cli(capsys, "edit", "--image", items2.parent / "p0.png", "--source", SRC, "--target", "x",
                    "--backbone", "tiny", "sed=3")
    assert code == 2 and "unknown key 'sed'" in err and "did you mean 'seed'?" in err


@pytest.mark.parametrize(
    "where, change, key, hint",
    [
        ("file, top level", {"extra": "ouput_dir: x\n"}, "ouput_dir", "output_dir"),
        ("file, trainer", {"extra": ""}, "devics", "devices"),
        ("file, logger", {"logger": "{name: wandb, mode: offline, projet: p}"}, "projet", "project"),
        ("file, method entry", {"methods": "METHOD_TYPO"}, "num_step", "num_steps"),
        ("command line, nested", {"args": ["trainer.devics=1"]}, "devics", "devices"),
        ("command line, method", {"args": ["methods.ef.num_step=3"]}, "num_step", "num_steps"),
    ],
)
def test_misspelt_keys_stop_run_before_any_work(items2, tmp_path, capsys, where, change, key, hint) -> None:
    """A typo anywhere in a run config is one error line naming it and the closest valid key,
    exit 2, and nothing written (the model is never loaded)."""
    kwargs = {k: v for k, v in change.items() if k in ("extra", "logger", "methods")}
    if kwargs.get("methods") == "METHOD_TYPO":
        kwargs["methods"] = METHOD.replace("num_steps", "num_step")
    cfg = experiment(tmp_path / "exp.yaml", items2, tmp_path / "out", **kwargs)
    if where == "file, trainer":
        cfg.write_text(cfg.read_text().replace("devices: 1", "devics: 1"))
    code, err = cli(capsys, "run", cfg, "--no-progress", *change.get("args", []))
    assert code == 2, err
    assert err.startswith("error:") and err.count("\n") == 1, err
    assert f"unknown key {key!r}" in err and f"did you mean {hint!r}?" in err, err
    assert not (tmp_path / "out").exists()


def test_a_rerun_never_damages_an_earlier_run(items2: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    cfg = experiment(tmp_path / "exp.yaml", items2, out)
    assert cli(capsys, "run", cfg, "--no-progress")[0] == 0
    first = (out / "results.csv").read_text()
    first_summary = (out / "summary.csv").read_text()
    assert len(read_csv(out / "results.csv")) == 4

    # another seed into the same folder: refused, nothing touched
    code, err = cli(capsys, "run", cfg, "seed=1", "--no-progress")
    assert code == 2 and "holds a run of another configuration" in err and "seed: 0 -> 1" in err
    assert "--force" in err and "Traceback" not in err
    assert (out / "results.csv").read_text() == first and (out / "summary.csv").read_text() == first_summary
    assert len(list((out / "config_history").glob("*.yaml"))) == 1
    # a changed option of an existing method: refused too
    code, err = cli(capsys, "run", cfg, "methods.ef.editor.guidance_scale=7", "--no-progress")
    assert code == 2 and "methods.ef.editor.guidance_scale: 15.0 -> 7" in err

    # a method added: allowed without --force; the old rows are kept and not redone
    cfg2 = experiment(tmp_path / "exp2.yaml", items2, out, methods=METHOD + SECOND)
    assert cli(capsys, "run", cfg2, "--no-progress")[0] == 0
    rows = read_csv(out / "results.csv")
    assert len(rows) == 8 and {r["variant"] for r in rows} == {"ef", "ef9"}
    old = {(r["item_id"], r["target_index"]): r["seed"] for r in read_csv(out / "results.csv") if r["variant"] == "ef"}
    assert len(old) == 4

    # --force: rows of another seed go beside the old ones; the summary covers every row
    assert cli(capsys, "run", cfg2, "seed=1", "--force", "--no-progress")[0] == 0
    rows = read_csv(out / "results.csv")
    summary = read_csv(out / "summary.csv")
    assert len(rows) == 16
    assert sum(int(s["rows"]) for s in summary) == len(rows)
    assert {(s["variant"], s["setting"]) for s in summary} == {(r["variant"], r["setting"]) for r in rows}
    # every invocation's resolved config is kept: 3 runs that ran
    history = sorted((out / "config_history").glob("*.yaml"))
    assert [p.name[:3] for p in history] == ["001", "002", "003"]
    from omegaconf import OmegaConf

    assert [OmegaConf.load(p).seed for p in history] == [0, 0, 1]
    assert OmegaConf.load(out / "config.yaml").seed == 1


# ----------------------------------------------------------------------------- 2 (and 7: one log line)


@pytest.mark.slow
def test_more_devices_than_items(tmp_path: Path) -> None:
    """2 gloo processes, 1 item: the idle rank waits at the barrier and writes nothing."""
    data = make_items(tmp_path / "data", 1)
    out = tmp_path / "out"
    cfg = experiment(tmp_path / "exp.yaml", data, out)
    proc = subprocess.run(
        [sys.executable, "-m", "framework.cli", "run", str(cfg), "--no-progress",
         "trainer.devices=2", "trainer.strategy=ddp"],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert "Starting with 2 processes" in text or "world_size=2" in text.replace(" ", "")
    assert sorted(p.name for p in (out / "parts").iterdir()) == ["rows-rank0.jsonl"]
    rows = read_csv(out / "results.csv")
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    # 7: one line per log message (Lightning's were printed twice), no accelerate warning block
    assert text.count("GPU available: False") == 1, text[-3000:]
    assert "accelerate" not in text


# ----------------------------------------------------------------------------- 3


class CountingServer:
    """A TCP endpoint on 127.0.0.1 that counts connections and drops each at once."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.count = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.count += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_unreachable_hub_fails_after_one_request(tmp_path: Path, photo_path: Path) -> None:
    server = CountingServer()
    env = subprocess_env(HF_ENDPOINT=server.url, HF_HOME=str(tmp_path / "hf"))
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("TRANSFORMERS_OFFLINE", None)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "framework.cli", "edit", "--image", str(photo_path), "--source", SRC,
             "--target", "a cat", "--backbone", "someone/some-model", "--out", str(tmp_path / "o"), "--no-progress"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=110,
        )
    finally:
        server.close()
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: could not load Stable Diffusion weights"), proc.stderr[
        -2000:
    ]
    assert "cannot be reached" in lines[0] and "HF_HUB_OFFLINE=1" in lines[0] and "local diffusers folder" in lines[0]
    # our one probe, and huggingface_hub's one-off fetch of its agent registry (for its
    # user-agent header); before, huggingface_hub tried every file 5 times with back-off
    assert 1 <= server.count <= 2
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("typo, preset", [("tinyy", "tiny"), ("sd-14", "sd14"), ("SD15", "sd15")])
def test_preset_typos_get_did_you_mean(typo: str, preset: str) -> None:
    from framework.backbone import load_backbone
    from framework.errors import ConfigError

    with pytest.raises(ConfigError, match=f"did you mean '{preset}'"):
        load_backbone(typo, device="cpu")


# ----------------------------------------------------------------------------- 4


def test_authors_yaml_paths_resolve_from_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    from plugins.datasets.yaml_list import YamlListDataset, YamlListOptions

    repo = tmp_path / "DDPM_inversion"
    (repo / "example_images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(repo / "example_images" / "horse_mud.jpg")
    (repo / "test.yaml").write_text(
        "- init_img: /example_images/horse_mud.jpg\n  source_prompt: a horse\n  target_prompts: [a zebra]\n"
    )
    elsewhere = tmp_path / "configs"
    elsewhere.mkdir()
    shutil.copy(repo / "test.yaml", elsewhere / "test.yaml")
    want = (repo / "example_images" / "horse_mud.jpg").resolve()

    monkeypatch.chdir(repo)  # the authors' script runs in its folder: '.' + init_img
    [item] = YamlListDataset(YamlListOptions(path=str(elsewhere / "test.yaml"))).items()
    assert Path(item.image_path).resolve() == want and item.id == "example_images/horse_mud"
    monkeypatch.chdir(tmp_path)  # elsewhere: beside the YAML file, leading '/' dropped
    [item] = YamlListDataset(YamlListOptions(path=str(repo / "test.yaml"))).items()
    assert Path(item.image_path).resolve() == want
    # ours, relative to the YAML file, keeps working
    (repo / "ours.yaml").write_text(
        "- init_img: example_images/horse_mud.jpg\n  source_prompt: a\n  target_prompts: b\n"
    )
    [item] = YamlListDataset(YamlListOptions(path=str(repo / "ours.yaml"))).items()
    assert Path(item.image_path).resolve() == want


# ----------------------------------------------------------------------------- 5


@pytest.mark.parametrize("case", ["under_a_file", "cuda", "seed", "unwritable"])
def test_edit_user_errors_are_one_line(case: str, tmp_path: Path, photo_path: Path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = tmp_path / "out"
    extra: list[str] = []
    if case == "under_a_file":
        out, message = blocker / "out", "a_file is a file, not a folder"
    elif case == "cuda":
        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
        extra, message = ["--device", "cuda"], "no CUDA GPU is available"
    elif case == "seed":
        extra, message = ["--seed", str(2**70)], "does not fit in 64 bits"
    else:
        if os.geteuid() == 0:
            pytest.skip("root can write into read-only folders")
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        out, message = locked / "out", "is not writable"
    code, err = cli(capsys, "edit", "--image", photo_path, "--source", SRC, "--target", "a cat", "--backbone", "tiny",
                    "--steps", "2", "--skip", "1", "--out", out, "--no-progress", *extra)
    assert code == 2, err
    assert err.startswith("error:") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_edits_into_one_folder_keep_every_config(tmp_path: Path, photo_path: Path, capsys) -> None:
    out = tmp_path / "out"
    for seed in (3, 4):
        code, err = cli(capsys, "edit", "--image", photo_path, "--source", SRC, "--target", "a cat", "--backbone",
                        "tiny", "--steps", "2", "--skip", "1", "--seed", str(seed), "--out", out, "--no-progress")
        assert code == 0, err
    from omegaconf import OmegaConf

    history = sorted((out / "config_history").glob("*.yaml"))
    assert [OmegaConf.load(p).seed for p in history] == [3, 4]
    assert OmegaConf.load(out / "config.yaml").seed == 4


def test_failed_edit_leaves_no_folder(tmp_path: Path, photo_path: Path, capsys) -> None:
    out = tmp_path / "out"
    long = "a very long prompt " * 40
    code, err = cli(capsys, "edit", "--image", photo_path, "--source", SRC, "--target", long, "--backbone", "tiny",
                    "--steps", "2", "--skip", "1", "--out", out, "--no-progress")
    assert code == 2 and "text encoder takes 77" in err
    assert not out.exists()  # was: a folder holding only config.yaml
    # 7: the error does not echo the whole prompt
    assert long.strip() not in err and len(err) < 400, err


def test_run_output_dir_under_a_file(items2: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cfg = experiment(tmp_path / "exp.yaml", items2, blocker / "out")
    code, err = cli(capsys, "run", cfg, "--no-progress")
    assert code == 2 and err.startswith("error: cannot create the output_dir") and err.count("\n") == 1, err
    code, err = cli(capsys, "run", cfg, f"output_dir={tmp_path / 'o'}", f"seed={2**64}")
    assert code == 2 and "does not fit in 64 bits" in err and not (tmp_path / "o").exists()


def test_failed_first_run_leaves_no_folder(items2: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    cfg = experiment(tmp_path / "exp.yaml", items2, out)
    code, err = cli(
        capsys,
        "run",
        cfg,
        "--no-progress",
        "backbone=stable_diffusion",
        f"backbone.model={tmp_path / 'no-model'}",
        "backbone.local_files_only=true",
    )
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(f"error: folder not found: {tmp_path / 'no-model'}")
    assert "WeightsNotFoundError" not in err  # no traceback of the error itself
    assert not out.exists()  # was: a folder holding only config.yaml


# ----------------------------------------------------------------------------- 6


def wait_for_bytes(path: Path, needle: bytes, seconds: float) -> bytes:
    """The file's bytes once they hold ``needle`` (or when ``seconds`` have passed)."""
    import time

    deadline = time.monotonic() + seconds
    data = path.read_bytes()
    while needle not in data and time.monotonic() < deadline:
        time.sleep(0.5)
        data = path.read_bytes()
    return data


def test_wandb_offline_run_holds_images_and_config(items2: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "out"
    cfg = experiment(tmp_path / "exp.yaml", items2, out, logger="{name: wandb, mode: offline, project: ef-test, "
                     "reconstructions: true}")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    assert cli(capsys, "run", cfg, "--no-progress")[0] == 0
    rows = read_csv(out / "results.csv")
    assert all(r["reconstruction_path"] and (out / r["reconstruction_path"]).is_file() for r in rows)
    [run] = list((out / "wandb").glob("offline-run-*"))

    # per-item grids: real PNGs under files/media/images/grids/, input + 1 variant, 1 + 2 rows
    grids = sorted((run / "files" / "media" / "images" / "grids").glob("*.png"))
    assert len(grids) == 2
    grid = Image.open(grids[0])
    assert grid.size == (2 * 34 + 2, 3 * 34 + 2)
    cell = np.asarray(grid)[2:34, 2:34]  # the input, top left
    inputs = [np.asarray(Image.open(out / r["input_path"]).convert("RGB")) for r in rows]
    assert any(np.array_equal(cell, x) for x in inputs)

    # the results table as wandb stores it (a run artifact, staged until `wandb sync`): real
    # image cells whose files are the PNGs the run wrote
    staged = {}
    tables = []
    for path in (out / "wandb" / "data").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            staged[hashlib.sha256(data).hexdigest()] = data
            if data[:1] == b"{" and b'"_type": "table"' in data[:200]:
                tables.append(json.loads(data))
    results = [t for t in tables if "output" in t["columns"]]
    assert results  # wandb stages the logged table (sometimes twice: same content)
    assert all(t == results[0] for t in results)
    cols = results[0]["columns"]
    assert len(results[0]["data"]) == 4
    for row in results[0]["data"]:
        by_id = {r["output_path"]: r for r in rows}
        for col in ("input", "output", "reconstruction"):
            cell = row[cols.index(col)]
            assert cell["_type"] == "image-file" and cell["format"] == "png", cell
            png = staged[cell["sha256"]]
            assert png[:4] == b"\x89PNG"
        out_cell = row[cols.index("output")]
        match = [r for r in by_id.values() if hashlib.sha256((out / r["output_path"]).read_bytes()).hexdigest()
                 == out_cell["sha256"]]
        assert len(match) >= 1
    # the resolved config and the metrics reach the run's transaction log (written by wandb's
    # service process, which may still be flushing it when the run returns: wait up to 60 s)
    log = wait_for_bytes(next(run.glob("run-*.wandb")), b"ef/edit_nfe_mean", 60)
    assert b"output_dir" in log and str(out).encode() in log and b"ddpm_edit_friendly" in log
    assert b"ef/edit_nfe_mean" in log


# ----------------------------------------------------------------------------- 7


def test_root_handler_skips_records_of_loggers_with_their_own_handler() -> None:
    from framework.cli import skip_records_handled_below

    own = logging.getLogger("editfriendly_test_lib")
    handler = logging.NullHandler()
    own.addHandler(handler)
    try:
        below = logging.LogRecord("editfriendly_test_lib.sub", logging.INFO, __file__, 1, "x", None, None)
        assert skip_records_handled_below(below) is False  # its parent printed it already
        plain = logging.LogRecord("framework.experiment.run", logging.WARNING, __file__, 1, "x", None, None)
        assert skip_records_handled_below(plain) is True
    finally:
        own.removeHandler(handler)


def test_run_shows_steps_and_compare_reads_an_interrupted_run(
    items2: Path, tmp_path: Path, capsys, caplog, monkeypatch
) -> None:
    out = tmp_path / "out"
    cfg = experiment(tmp_path / "exp.yaml", items2, out)
    monkeypatch.setattr("framework.progress.interactive", lambda *streams: True)  # as on a terminal
    code, err = cli(capsys, "run", cfg)  # with progress bars
    assert code == 0
    assert "edit:" in err and "step/s" in err  # the steps of the current item, under the items bar
    # an interrupted run: part files, no results.csv
    (out / "results.csv").unlink()
    code, err = cli(capsys, "compare", out, "--out", tmp_path / "report")
    assert code == 0, err
    assert "has no results.csv (an interrupted run): read the 4 finished rows" in caplog.text
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| ef" in report or "ef |" in report, report[:1000]
    # 5: compare's user errors are one line too
    code, err = cli(capsys, "compare", out, "--out", tmp_path / "report" / "report.md" / "x")
    assert code == 2 and err.startswith("error: cannot create the report folder") and err.count("\n") == 1, err


# ----------------------------------------------------------------------------- 8


def test_threads_pins_the_cpu_threads_of_every_process(items2: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """Float sums depend on the thread count (1 vs 2 threads changed 8 of 9 tiny-model images by
    one grey level at 100 steps), so 1 and N processes agree when ``threads`` pins it."""
    from framework.experiment import run as runner

    seen = []
    real = runner.EditModule.process

    def spy(self, item):
        seen.append(torch.get_num_threads())
        return real(self, item)

    monkeypatch.setattr(runner.EditModule, "process", spy)
    cfg = experiment(tmp_path / "exp.yaml", items2, tmp_path / "out", extra="threads: 1\n")
    torch.set_num_threads(2)  # what a 1-process run on 2 cores has
    try:
        from framework.cli import main

        assert main(["run", str(cfg), "--no-progress"]) == 0
    finally:
        torch.set_num_threads(1)
    assert seen == [1, 1]
    code, err = cli(capsys, "run", cfg, "threads=0")
    assert code == 2 and "threads must be a positive integer" in err
