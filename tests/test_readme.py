"""The README is a user's guide: short, in user terms, its links real and its commands working."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")

#: words that only make sense to the people who made the project, not to its users
AUTHORS_WORDS = re.compile(
    r"\b(probe|probe's|feasibility|brief|helpers?|sessions?|issue \d+)\b|\.\./shared|(?-i:ARCHITECTURE\.md)",
    re.IGNORECASE,
)


def read_edit(path: Path) -> tuple[str, str, str]:
    """(digit, fg, bg) of a digits image on disk, as the digits classifier reads them."""
    from PIL import Image

    from framework import digits as D
    from framework.digits_eval import classifier
    from framework.images import pil_to_tensor

    p = classifier().predict(pil_to_tensor(Image.open(path)))
    return D.DIGIT_WORDS[int(p["digit"])], D.COLORS[int(p["fg"])], D.COLORS[int(p["bg"])]


def fenced_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.DOTALL)


def setup_commands() -> list[str]:
    section = README.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in fenced_blocks(section, "bash")]


def test_readme_is_a_guide_of_at_most_300_lines() -> None:
    assert len(README.splitlines()) <= 300


@pytest.mark.parametrize("path", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))])
def test_no_words_only_the_authors_understand(path: str) -> None:
    text = (ROOT / path).read_text(encoding="utf-8")
    if path != "README.md":  # docs may name tests/helpers/ and small helper functions
        text = re.sub(r"tests/helpers/?|small helpers", "", text)
    found = sorted({m.group(0) for m in AUTHORS_WORDS.finditer(text)})
    assert not found, f"{path} says {found}"


def test_every_link_and_image_exists() -> None:
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        text = doc.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if target.startswith(("http://", "https://")):
                continue
            assert (doc.parent / target).exists(), f"{doc.name} links to {target}, which does not exist"


def test_fidelity_and_every_doc_are_linked_from_the_readme() -> None:
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{doc.name})" in README, f"README does not link docs/{doc.name}"


def test_every_backbone_preset_is_in_the_options_table() -> None:
    table = README.split("Options (`editfriendly edit --help`)", 1)[1].split("\n\n", 2)[1]
    for preset in sorted(p.stem for p in (ROOT / "configs" / "backbone").glob("*.yaml")):
        assert f"`{preset}`" in table, f"backbone preset {preset} missing from the README's options"


def test_two_setup_commands_one_runs_the_main_job_one_the_tests_as_ci_does() -> None:
    main, tests = setup_commands()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for command in (main, tests):
        assert "\n" not in command  # one line each, to paste
        assert "pip install torch==2.14.1 torchvision==0.29.1" in command
    assert "torch==2.14.1 torchvision==0.29.1" in ci
    assert main.split(" && ")[-1].startswith("editfriendly edit --backbone digits ")
    test_cmd = tests.split(" && ")[-1]
    assert test_cmd == "python -m pytest -q"
    assert re.search(rf"^{re.escape(test_cmd)}$", ci, flags=re.MULTILINE), ".ci/run must run the README's test command"
    assert 'pip install -e ".[dev]"' in tests and 'pip install --quiet -e ".[dev]"' in ci


@pytest.mark.slow
def test_the_main_command_edits_the_seven_in_a_fresh_copy(tmp_path: Path) -> None:
    """The README's first command (after the install steps) in a copy of the tracked files, with an
    empty model cache: it writes the edit it names, and the edit is blue and keeps the seven."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    clone = tmp_path / "clone"
    for name in files:
        src = ROOT / name
        if src.is_file():
            dst = clone / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
    edit = shlex.split(setup_commands()[0].split(" && ")[-1])
    env = {**os.environ, "PYTHONPATH": str(clone), "EDITFRIENDLY_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "framework.cli", *edit[1:]], cwd=clone, env=env, capture_output=True, text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    promised = re.search(r"writes `(outputs/[^`]+\.png)`", README).group(1)
    out = clone / promised
    assert out.is_file()
    assert read_edit(out) == ("seven", "blue", "black")


def test_the_python_example_runs(tmp_path: Path, monkeypatch) -> None:
    (code,) = fenced_blocks(README, "python")
    (tmp_path / "data").symlink_to(ROOT / "data")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    assert read_edit(tmp_path / "edit.png") == ("seven", "blue", "black")
