"""The `editfriendly` command: end to end on a real photo, `list`, and clean user errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from framework.cli import main

SRC = "a photo of a flower"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_edit_end_to_end(tmp_path, photo_path, capsys) -> None:
    out_dir = tmp_path / "out"
    code, out, err = run_cli(
        capsys, "edit", "--image", str(photo_path), "--source", SRC,
        "--target", "a painting of a flower", "--target", "a photo of a cat",
        "--backbone", "tiny", "--out", str(out_dir), "--seed", "3", "editor.guidance_scale=9",
    )
    assert code == 0, err
    pngs = sorted(p.name for p in out_dir.glob("flower_*.png"))
    assert pngs == ["flower_00_a-painting-of-a-flower.png", "flower_01_a-photo-of-a-cat.png"]
    for name in pngs:
        with Image.open(out_dir / name) as img:
            assert img.size == (32, 32) and img.mode == "RGB"
    lines = [json.loads(line) for line in (out_dir / "edits.jsonl").read_text().splitlines()]
    assert [line["target_prompt"] for line in lines] == ["a painting of a flower", "a photo of a cat"]
    first = lines[0]
    assert first["seed"] == 3 and first["num_steps"] == 100 and first["skip"] == 36
    assert first["inversion_nfe"] == 64 and first["edit_nfe"] == 64
    assert first["inversion_seconds"] > 0 and first["edit_seconds"] > 0
    assert first["editor"]["guidance_scale"] == 9
    cfg = (out_dir / "config.yaml").read_text()
    assert "name: tiny" in cfg and "guidance_scale: 9" in cfg and "target_prompts" in cfg
    assert (out_dir / "input.png").exists()


def test_edit_accepts_local_diffusers_folder_and_odd_images(tmp_path, tiny, capsys) -> None:
    img = Image.new("LA", (50, 30), (120, 200))  # grayscale + alpha, not square
    path = tmp_path / "odd.png"
    img.save(path)
    code, _, err = run_cli(
        capsys, "edit", "--image", str(path), "--source", "a photo", "--target", "a cat",
        "--backbone", tiny.options.model, "--steps", "6", "--skip", "2", "--size", "48x32",
        "--out", str(tmp_path / "o"), "--no-progress",
    )
    assert code == 0, err
    with Image.open(tmp_path / "o" / "odd_00_a-cat.png") as out:
        assert out.size == (48, 32)


def test_list_prints_plugins_and_options(capsys) -> None:
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    assert "ddpm_edit_friendly" in out and "zero_last_noise" in out and "guidance_scale" in out
    code, out, _ = run_cli(capsys, "list", "--json")
    data = json.loads(out)
    assert data["plugins"]["inverters"]["ddpm_edit_friendly"]["options"]["eta"]["default"] == 1.0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--image", "MISSING"], "image file not found"),
        (["--image", "JUNK"], "not an image"),
        (["--steps", "10", "--skip", "10"], "skip"),
        (["--steps", "0"], "--steps"),
        (["editor=magic"], "unknown editor 'magic'; known editors: "),
        (["inverter.strength=2"], "unknown option 'strength'"),
        (["--target", "cat " * 90, "--steps", "3", "--skip", "1"], "text encoder takes 77"),
    ],
)
def test_user_errors_are_clean(extra, message, tmp_path, photo_path, capsys) -> None:
    extra = list(extra)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\x00\x01 not a jpeg")
    args = ["edit", "--image", str(photo_path), "--source", SRC, "--target", "a cat", "--backbone", "tiny",
            "--out", str(tmp_path / "o"), "--no-progress"]
    for i, a in enumerate(extra):
        if a == "MISSING":
            extra[i] = str(tmp_path / "nope.png")
        elif a == "JUNK":
            extra[i] = str(junk)
    if extra[0] == "--image":
        args[args.index("--image") + 1] = extra[1]
        extra = extra[2:]
    if extra and extra[0] == "--target":
        args[args.index("--target") + 1] = extra[1]
        extra = extra[2:]
    code, _, err = run_cli(capsys, *args, *extra)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_long_prompt_truncates_with_warning_when_asked(tmp_path, photo_path, capsys) -> None:
    with pytest.warns(UserWarning, match="truncated"):
        code, _, err = run_cli(
            capsys, "edit", "--image", str(photo_path), "--source", SRC, "--target", "cat " * 90,
            "--backbone", "tiny", "--steps", "3", "--skip", "1", "--out", str(tmp_path / "o"),
            "backbone.truncate_prompts=true", "--no-progress",
        )
    assert code == 0, err


def test_missing_target_is_a_usage_error(photo_path, capsys) -> None:
    code, _, err = run_cli(capsys, "edit", "--image", str(photo_path), "--source", SRC)
    assert code == 2 and "--target" in err


@pytest.mark.slow
def test_console_entry_point_runs_as_module(photo_path, tmp_path) -> None:
    """The installed command and `python -m framework.cli` exit non-zero without a traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "framework.cli", "edit", "--image", str(tmp_path / "none.png"),
         "--source", SRC, "--target", "x", "--backbone", "tiny"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert "error: image file not found" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_weights_error_is_clear(tmp_path) -> None:
    from framework.backbone import load_backbone
    from framework.errors import WeightsNotFoundError

    with pytest.raises(WeightsNotFoundError, match="^folder not found: .*no-model .*digits"):
        load_backbone(str(tmp_path / "no-model"), device="cpu", local_files_only=True)


def _imported_modules(path) -> set[str]:
    """Every module a Python file imports, at module level or inside functions."""
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            # ``from framework import cli``
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_engine_does_not_import_the_cli() -> None:
    """No import cycle: the CLI depends on the engine, never the other way round. Every module
    of framework/ (packages included) and plugins/ except cli.py itself, lazy imports too."""
    from pathlib import Path

    import framework

    root = Path(framework.__file__).resolve().parent
    files = [p for p in root.rglob("*.py") if p != root / "cli.py"]
    files += list((root.parent / "plugins").rglob("*.py"))
    names = {p.relative_to(root.parent).as_posix() for p in files}
    assert {"framework/edit.py", "framework/inversion.py", "framework/naming.py"} <= names
    offenders = sorted(
        p.relative_to(root.parent).as_posix()
        for p in files
        if any(m == "framework.cli" or m.startswith("framework.cli.") for m in _imported_modules(p))
    )
    assert offenders == []


def test_engine_modules_load_without_the_cli() -> None:
    """The same at run time: importing the engine (the edit functions, runner, report, demo)
    leaves framework.cli unloaded."""
    code = (
        "import sys, importlib\n"
        "for m in ('framework.edit', 'framework.experiment.run', 'framework.report.build', 'framework.demo',\n"
        "          'plugins'):\n"
        "    importlib.import_module(m)\n"
        "print('framework.cli' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"


def test_building_the_parser_loads_no_engine() -> None:
    """`editfriendly --help` and argument errors stay fast: no torch, Lightning, matplotlib or Gradio."""
    code = (
        "import sys\n"
        "from framework.cli import build_parser\n"
        "build_parser()\n"
        "heavy = ('torch', 'lightning', 'matplotlib', 'gradio', 'omegaconf', 'diffusers')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
