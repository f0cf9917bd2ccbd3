"""A run folder never serves stale, mixed or overwritten results (tiny backbone, CPU, 3 steps).

1. an item edited in the dataset (a target prompt, the image) is recomputed on resume; rows of
   removed items leave results.csv and summary.csv; the run says what it recomputed and why;
2. a deleted or emptied image is remade on resume (each file's sha256 is in results.csv);
3. outputs of another seed or setting never overwrite a file a row names; method names whose
   folder names collide are refused;
4. one run at a time per folder (two real processes started together);
5. temporary files have unique names and leftovers of a killed run are removed;
6. a full disk (a file size limit) is one ``error:`` line, exit 1, and the resume is identical;
7. a resumed run says how many rows it computed and how many it reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers.runs import make_yaml_dataset, read_csv, run_inprocess

ROOT = Path(__file__).resolve().parent.parent
TIMING = {"inversion_seconds", "edit_seconds"}

METHOD = """methods:
  - name: {name}
    inverter: {{name: ddpm_edit_friendly, guidance_scale: 3.5}}
    editor: {{name: text, guidance_scale: 15}}
    num_steps: 3
    skip: 1
"""


def experiment(folder: Path, data: Path, out: Path, seed: int = 0, names: tuple[str, ...] = ("a",),
               name: str = "exp.yaml") -> Path:
    body = "".join(METHOD.format(name=n) if k == 0 else METHOD.format(name=n).split("\n", 1)[1]
                   for k, n in enumerate(names))
    path = folder / name
    path.write_text(
        f"backbone: {{name: tiny}}\ndata: {{name: yaml_list, path: {data}}}\n{body}metrics: [time]\n"
        f"trainer: {{accelerator: cpu, devices: 1}}\nlogger: {{name: none}}\noutput_dir: {out}\nseed: {seed}\n"
    )
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def without_timing(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def run(cfg: Path, capsys: pytest.CaptureFixture, *overrides: str) -> tuple[int, str]:
    capsys.readouterr()
    code = run_inprocess(cfg, *overrides)
    return code, capsys.readouterr().err


def part_lines(out: Path) -> list[dict]:
    lines = []
    for p in sorted((out / "parts").glob("rows-*.jsonl")):
        lines += [json.loads(line) for line in p.read_text().splitlines() if line.endswith("}")]
    return lines


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture
def data3(tmp_path: Path) -> Path:
    """3 items (img0: 1 target, img1: 2 targets, img2: 1 target)."""
    return make_yaml_dataset(tmp_path / "data", n=3)


# ----------------------------------------------------------------------------- 1, 7


def test_edited_items_are_recomputed_and_removed_items_leave(tiny, data3: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    cfg = experiment(tmp_path, data3, out)
    code, err = run(cfg, capsys)
    assert code == 0 and "(4 rows: 4 computed, 0 reused)" in err
    first = {(r["item_id"], r["target_index"]): r for r in read_csv(out / "results.csv")}
    assert all(len(r["item_sha256"]) == 64 for r in first.values())

    # a resumed run with nothing to do says so
    code, err = run(cfg, capsys)
    assert code == 0 and "(4 rows: 0 computed, 4 reused)" in err
    assert not [line for line in err.splitlines() if line.startswith("recomputed")]

    # a new target prompt for img1 (its second target)
    text = data3.read_text().replace('["a photo of a dog", "a painting of a cat"]', '["a photo of a dog", "a fox"]')
    data3.write_text(text)
    code, err = run(cfg, capsys)
    assert code == 0
    assert "(4 rows: 2 computed, 2 reused)" in err  # both rows of the item: its edits are made together
    assert "recomputed 2 rows: inputs changed (item img1: target prompt)" in err
    rows = {(r["item_id"], r["target_index"]): r for r in read_csv(out / "results.csv")}
    assert rows[("img1", "1")]["target_prompt"] == "a fox"
    assert "a-fox" in rows[("img1", "1")]["output_path"]
    assert sha(out / rows[("img1", "1")]["output_path"]) == rows[("img1", "1")]["output_sha256"]
    assert rows[("img0", "0")] == first[("img0", "0")]  # untouched items are reused as they were

    # another image for img2 (same name, other bytes)
    Image.open(data3.parent / "img0.png").save(data3.parent / "img2.png")
    code, err = run(cfg, capsys)
    assert code == 0 and "(4 rows: 1 computed, 3 reused)" in err
    assert "recomputed 1 row: inputs changed (item img2: image)" in err
    rows2 = {(r["item_id"], r["target_index"]): r for r in read_csv(out / "results.csv")}
    assert rows2[("img2", "0")]["image_sha256"] == sha(data3.parent / "img2.png")
    assert rows2[("img2", "0")]["output_sha256"] != first[("img2", "0")]["output_sha256"]

    # img0 leaves the dataset: its row leaves results.csv and summary.csv, its part-file line stays
    entries = data3.read_text().split("- init_img: ")[1:]
    data3.write_text("".join("- init_img: " + e for e in entries if not e.startswith("img0.png")))
    code, err = run(cfg, capsys)
    assert code == 0 and "(3 rows: 0 computed, 3 reused)" in err
    rows3 = read_csv(out / "results.csv")
    assert sorted(r["item_id"] for r in rows3) == ["img1", "img1", "img2"]
    assert [s["rows"] for s in read_csv(out / "summary.csv")] == ["3"]
    assert "img0" in {r["item_id"] for r in part_lines(out)}


# ----------------------------------------------------------------------------- 2


def test_missing_or_damaged_outputs_are_remade(tiny, data3: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    cfg = experiment(tmp_path, data3, out)
    assert run(cfg, capsys)[0] == 0
    first = read_csv(out / "results.csv")
    (out / first[0]["output_path"]).unlink()  # img0's edit deleted
    (out / first[1]["output_path"]).write_bytes(b"")  # img1's first edit emptied
    (out / first[3]["input_path"]).write_bytes(b"not a png")  # img2's input damaged
    code, err = run(cfg, capsys)
    assert code == 0
    assert "(4 rows: 3 computed, 1 reused)" in err
    assert (
        f"recomputed 3 rows: output missing or damaged (item img0: {first[0]['output_path']} missing, "
        f"item img1: {first[1]['output_path']} empty, item img2: {first[3]['input_path']} changed)"
    ) in err
    rows = read_csv(out / "results.csv")
    assert without_timing(rows) == without_timing(first)  # the same rows, the same files again
    for r in rows:
        for col in ("input", "output"):
            assert sha(out / r[f"{col}_path"]) == r[f"{col}_sha256"]


# ----------------------------------------------------------------------------- 3


def test_another_seed_never_overwrites_a_row_s_image(tiny, data3: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    cfg = experiment(tmp_path, data3, out)
    assert run(cfg, capsys)[0] == 0
    first = read_csv(out / "results.csv")
    code, err = run(cfg, capsys, "seed=1", "--force")
    assert code == 0 and "4 of other settings kept" in err
    rows = read_csv(out / "results.csv")
    assert len(rows) == 8 and len({r["output_path"] for r in rows}) == 8
    for r in rows:  # every row's files are the ones it recorded, the first run's included
        assert sha(out / r["output_path"]) == r["output_sha256"]
        assert r["setting"] in r["output_path"] and f"seed{r['seed']}" in r["output_path"]
    files = {(r["output_path"], r["output_sha256"]) for r in rows}
    assert {(r["output_path"], r["output_sha256"]) for r in first} <= files


def test_method_names_with_one_folder_name_are_refused(tiny, data3: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    cfg = experiment(tmp_path, data3, out, names=("ef text", "ef-text"))
    code, err = run(cfg, capsys)
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'ef text'" in errors[0] and "'ef-text'" in errors[0]
    assert not out.exists()


# ----------------------------------------------------------------------------- 4


def test_a_locked_folder_is_refused_with_its_holder(tiny, data3: Path, tmp_path: Path, capsys) -> None:
    from framework.experiment.lock import RunLock

    out = tmp_path / "out"
    cfg = experiment(tmp_path, data3, out)
    out.mkdir()
    with RunLock(out):
        code, err = run(cfg, capsys)
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"in use by another run (pid {os.getpid()} on host " in errors[0]
    assert not (out / "config.yaml").exists() and not (out / "parts").exists()
    # the lock goes with its holder: the next run needs no cleaning
    assert run(cfg, capsys)[0] == 0


def test_processes_join_only_the_run_that_started_them(tmp_path: Path, monkeypatch) -> None:
    """A process carrying a run's token joins a folder locked by another process with that token;
    any other token, or a lock no one holds any more, is refused; a launcher's rank > 0 takes no lock."""
    from framework.experiment import lock as L
    from framework.experiment.run import claim_folder

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from framework.experiment.lock import RunLock; "
         f"RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); sys.stdin.read()"],
        cwd=ROOT, env=cli_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        token = L.read_holder(tmp_path)["token"]
        monkeypatch.setenv(L.TOKEN_ENV, token)
        L.join_run(tmp_path)  # a process the run started
        assert claim_folder(tmp_path) is None
        monkeypatch.setenv(L.TOKEN_ENV, "another-run")
        with pytest.raises(L.FolderInUseError, match=f"in use by another run \\(pid {holder.pid} "):
            L.join_run(tmp_path)
        monkeypatch.delenv(L.TOKEN_ENV)
        with pytest.raises(L.FolderInUseError, match=f"pid {holder.pid} on host"):
            claim_folder(tmp_path)
    finally:
        holder.communicate("", timeout=30)
    monkeypatch.setenv(L.TOKEN_ENV, token)
    with pytest.raises(L.FolderInUseError, match="the run that started this process has ended"):
        L.join_run(tmp_path)
    monkeypatch.delenv(L.TOKEN_ENV)
    monkeypatch.setenv("SLURM_PROCID", "3")  # rank 3 of a cluster job: its rank 0 holds the lock
    assert claim_folder(tmp_path) is None
    monkeypatch.delenv("SLURM_PROCID")
    lock = claim_folder(tmp_path)  # the ended holder's lock needs no cleaning
    assert lock is not None and L.read_holder(tmp_path)["pid"] == os.getpid()
    lock.release()


@pytest.mark.slow
def test_two_runs_started_together_into_one_folder(tiny, data3: Path, tmp_path: Path) -> None:
    """Two processes with different seeds into one folder: one runs, the other exits 2 naming it."""
    out = tmp_path / "out"
    go = tmp_path / "go"
    cfgs = [experiment(tmp_path, data3, out, seed=s, name=f"exp{s}.yaml") for s in (0, 1)]
    procs = [
        subprocess.Popen([sys.executable, str(ROOT / "tests" / "helpers" / "run_paused.py"), str(c), str(go)],
                         cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in cfgs
    ]
    deadline = time.monotonic() + 120
    while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.2)
    go.touch()  # the run holding the folder goes on
    results = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], [r[1][-2000:] for r in results]
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    errors = [line for line in results[loser][1].splitlines() if line.startswith("error:")]
    assert len(errors) == 1, results[loser][1][-2000:]
    assert f"is in use by another run (pid {procs[winner].pid} on host " in errors[0]
    assert "Traceback" not in results[loser][1]
    # the folder holds the winner's configuration and rows only
    assert f"seed: {winner}" in (out / "config.yaml").read_text()
    assert len(list((out / "config_history").glob("*.yaml"))) == 1
    rows = read_csv(out / "results.csv")
    assert len(rows) == 4 and {r["setting"] for r in rows} == {r["setting"] for r in part_lines(out)}


# ----------------------------------------------------------------------------- 5


def test_concurrent_csv_writers_never_share_a_temporary_file(tmp_path: Path) -> None:
    from framework.experiment.results import write_csv

    path = tmp_path / "results.csv"
    tables = {w: [{"writer": w, "k": k, "text": "x" * 200} for k in range(200)] for w in ("a", "b")}
    errors: list[BaseException] = []

    def write(w: str) -> None:
        try:
            for _ in range(40):
                write_csv(path, tables[w], ["writer", "k", "text"])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in tables]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    rows = read_csv(path)
    assert len(rows) == 200 and len({r["writer"] for r in rows}) == 1  # one whole table, never a mix
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_leftovers_of_a_killed_run_are_removed(tiny, data3: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    cfg = experiment(tmp_path, data3, out)
    assert run(cfg, capsys)[0] == 0
    edit = out / read_csv(out / "results.csv")[0]["output_path"]
    litter = [
        edit.with_name(f".{edit.name}.4242.tmp"),  # an image write cut short (0 bytes)
        out / ".results.csv.4242.abc.tmp",
        out / "results.csv.tmp",  # the fixed name of older versions
        out / "parts" / ".rows-rank0.jsonl.1.tmp",
    ]
    for p in litter:
        p.write_bytes(b"")
    keep = [out / "notes.txt", out / "images" / ".keep"]
    for p in keep:
        p.write_text("mine")
    assert run(cfg, capsys)[0] == 0
    assert [p for p in litter if p.exists()] == []
    assert all(p.exists() for p in keep)


# ----------------------------------------------------------------------------- 6


def _file_size_limit(limit: int):
    def apply() -> None:  # in the child: writes past ``limit`` bytes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_is_one_line_and_the_resume_is_identical(tiny, tmp_path: Path, capsys) -> None:
    data = make_yaml_dataset(tmp_path / "data", n=5)
    ref = tmp_path / "ref"
    assert run(experiment(tmp_path, data, ref, name="ref.yaml"), capsys)[0] == 0
    out = tmp_path / "out"
    cfg = experiment(tmp_path, data, out)
    proc = subprocess.run(
        [sys.executable, "-m", "framework.cli", "run", str(cfg), "--no-progress"], cwd=ROOT, env=cli_env(),
        capture_output=True, text=True, timeout=600, preexec_fn=_file_size_limit(5000),
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "rows-rank0.jsonl" in errors[0] and "EFBIG" in errors[0]
    assert "Traceback" not in proc.stderr
    written = part_lines(out)
    assert 0 < len(written) < 7  # some rows made it; the part file stays readable
    # space freed: the resume finishes the run as an uninterrupted one
    code, err = run(cfg, capsys)
    assert code == 0 and f"({7} rows: {7 - len(written)} computed, {len(written)} reused)" in err
    rows = read_csv(out / "results.csv")
    assert without_timing(rows) == without_timing(read_csv(ref / "results.csv"))


@pytest.mark.slow
def test_a_full_disk_under_two_processes_is_one_line(tiny, tmp_path: Path, capsys) -> None:
    """Both ranks write; one or both hit the limit; rank 0 reports one line, exit 1."""
    data = make_yaml_dataset(tmp_path / "data", n=6)
    ref = tmp_path / "ref"
    assert run(experiment(tmp_path, data, ref, name="ref.yaml"), capsys)[0] == 0
    out = tmp_path / "out"
    cfg = experiment(tmp_path, data, out)
    cfg.write_text(cfg.read_text().replace("devices: 1}", "devices: 2, strategy: ddp, num_nodes: 1}"))
    proc = subprocess.run(
        [sys.executable, "-m", "framework.cli", "run", str(cfg), "--no-progress"], cwd=ROOT, env=cli_env(),
        capture_output=True, text=True, timeout=600, preexec_fn=_file_size_limit(3000),
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Starting with 2 processes" in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "EFBIG" in errors[0] and ".jsonl" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    code, _ = run(cfg, capsys, "trainer.devices=1", "trainer.strategy=auto")  # the resume, in one process
    assert code == 0
    assert without_timing(read_csv(out / "results.csv")) == without_timing(read_csv(ref / "results.csv"))
